"""Decoding an encoder-decoder with the decoder-only machinery (infer/decode.py).

A prompt is the source. The prefill runs the encoder once over the right-padded sources,
puts the per-layer cross-attention keys/values and the source mask into the cache beside
the (empty) self-attention K/V, and runs the decoder on its start token; from there on the
cache is just a bigger pytree, so the same jitted decode steps, on-device sampling loop,
samplers, beam search (which reorders every cache entry along its batch axis) and best-of-N
serve both architectures. `Decoder(config, ...)` returns this class when
`config.arch == "encoder_decoder"`.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infer.decode import Decoder, bucket_length
from model import sharding
from model.attention import cache_logical_axes, init_cache
from model.encoder_decoder import DECODER_START_ID, EncoderDecoder, cache_batch_axes
from model.peft import PeftConfig
from model.quant import QuantConfig


class Seq2SeqDecoder(Decoder):
  """Decoder for `model.arch == "encoder_decoder"`: prompts are sources, the cache also
  holds cross-attention K/V; generated tokens start after DECODER_START_ID."""

  def __init__(self, config, mesh, peft: PeftConfig = PeftConfig(),
               quant: QuantConfig = QuantConfig(), unroll_layers: bool | None = None):
    super().__init__(config, mesh, peft, quant, unroll_layers=False)
    del unroll_layers  # the unrolled per-layer layout is the decoder-only Transformer's
    self.model = self.loop_model = EncoderDecoder(config, self.peft, self.quant)
    self.n_prompt = 0

  def cache_batch_axes(self, cache) -> dict:
    return cache_batch_axes(cache)

  def room(self, prompt) -> int:
    """New tokens a row may generate: the decoder's context after its start token."""
    del prompt
    return self.config.max_len - 1

  def _prefill_fn(self, params, tokens_BS, lengths_B, capacity: int):
    self.trace_count += 1
    b, s = tokens_BS.shape
    cache = init_cache(self.config, b, capacity)
    axes = cache_logical_axes(self.config)
    cache = jax.lax.with_sharding_constraint(cache, {
        name: jax.sharding.NamedSharding(
            self.mesh, sharding.logical_spec(axes[name], value.shape, self.mesh))
        for name, value in cache.items()})
    start_B1 = jnp.full((b, 1), DECODER_START_ID, jnp.int32)
    valid_BS = jnp.arange(s, dtype=jnp.int32)[None] < lengths_B[:, None]
    logits_B1V, _, cache = self.model.apply({"params": params}, start_B1, cache=cache,
                                            source_BS=tokens_BS, source_valid_BS=valid_BS)
    return logits_B1V[:, 0], cache

  def _pad_prompts(self, prompts, max_new_tokens: int):
    if not prompts:
      raise ValueError("no prompts given")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
      raise ValueError("empty source: give at least one token to encode")
    limit = self.config.max_len
    if max(lengths) > limit and self.config.pos_encoding == "learned":
      raise ValueError(f"source of {max(lengths)} tokens exceeds the model's max_len={limit}; "
                       "shorten it")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    bucket = bucket_length(max(lengths), max(limit, max(lengths)))
    capacity = bucket_length(1 + max_new_tokens, limit)
    tokens_BS = np.zeros((len(prompts), bucket), np.int32)
    for row, prompt in enumerate(prompts):
      tokens_BS[row, :len(prompt)] = prompt
    return jnp.asarray(tokens_BS), jnp.asarray(lengths, jnp.int32), capacity

  def max_new_tokens_for(self, prompts, requested: int) -> int:
    return max(1, min(requested, self.config.max_len - 1))

  def _score_fn(self, params, source_BS, source_valid_BS, tokens_BL):
    self.trace_count += 1
    logits_BLV, _ = self.model.apply({"params": params}, tokens_BL[:, :-1], source_BS=source_BS,
                                     source_valid_BS=source_valid_BS)
    logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp_BLV, tokens_BL[:, 1:, None], axis=-1)[..., 0]

  def score(self, params, prompts: Sequence[Sequence[int]],
            continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per-token log-likelihood of each continuation (target) given its prompt (source)."""
    if any(not c for c in continuations) or any(not p for p in prompts):
      raise ValueError("score needs a non-empty source and continuation for every row")
    room = self.config.max_len - 1
    if max(len(c) for c in continuations) > room:
      raise ValueError(f"a continuation exceeds the decoder context of {room} tokens")
    source_BS, lengths_B, _ = self._pad_prompts(prompts, 1)
    valid_BS = jnp.arange(source_BS.shape[1])[None] < lengths_B[:, None]
    width = bucket_length(1 + max(len(c) for c in continuations), self.config.max_len)
    tokens_BL = np.zeros((len(prompts), width), np.int32)
    tokens_BL[:, 0] = DECODER_START_ID
    for i, c in enumerate(continuations):
      tokens_BL[i, 1:1 + len(c)] = c
    with sharding.use_mesh(self.mesh):
      logp_BL = np.asarray(self._score(params, source_BS, valid_BS, jnp.asarray(tokens_BL)))
    return [logp_BL[i, :len(c)] for i, c in enumerate(continuations)]
