"""Jitted prefill and decode programs over an explicit KV cache, and the generation loops.

`Decoder(config, mesh, peft)` compiles, per (batch, prompt bucket, cache capacity):
  prefill(params, tokens_BL, lengths_B) -> (last_logits_BV, cache)  (logits of the last
    prompt position only)
  a sampling chunk: up to K tokens per dispatch in one on-device `lax.while_loop`
    (infer/sample_loop.py) holding sampling, per-row eos and per-row new-token caps;
    `generate` runs chunks until every row has finished, checking stop strings on the
    host between chunks;
  decode_step(params, cache, last_tokens_B, rng, sampling) -> (tokens_B, logprobs_B, cache)
    (one token per dispatch, for callers that drive the loop themselves).
Caches are donated. Sampling knobs, the seed, eos and caps are traced arrays, so changing
temperature / top-k / top-p / seed never recompiles; prompts are right-padded to
power-of-two buckets so prompts of different lengths reuse programs. With prompt tuning
the prefill prepends the P soft-prompt vectors, so the cache holds P + prompt + new tokens.
"""

import dataclasses
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infer import sample_loop, sampling
from infer.beam_search import beam_search
from infer.best_of_n import mean_logprob_score
from model import sharding
from model.attention import cache_logical_axes, init_cache
from model.config import ModelConfig
from model.peft import PeftConfig
from model.quant import QuantConfig
from model.transformer import Transformer, unstack_layer_params

MIN_BUCKET = 16
STEPS_PER_DISPATCH = 64  # tokens per on-device chunk without stop strings
STEPS_PER_STOP_CHECK = 16  # with stop strings (checked on the host between chunks)
MAX_UNROLLED_LAYERS = 32  # on-device loops unroll the layers of models up to this depth


def bucket_length(n: int, cap: int) -> int:
  """Smallest power of two >= n (at least MIN_BUCKET), capped at `cap`."""
  size = MIN_BUCKET
  while size < n:
    size *= 2
  return min(size, cap)


@dataclasses.dataclass
class Generation:
  """Generated continuations, one per prompt (best first for beam / best-of-N)."""
  tokens: list[list[int]]
  logprobs: list[list[float]]  # per generated token, under the untempered model
  finish_reasons: list[str]  # "eos", "stop", "length"
  scores: list[float] | None = None
  prefill_seconds: float = 0.0  # first call includes compilation
  decode_seconds: float = 0.0
  decode_steps: int = 0


class Decoder:
  """Prefill / decode programs for one model config on one mesh.

  unroll_layers: inside the on-device loops (sampling chunks, beam search) run the layers
  unrolled on per-layer weights, sliced from the scanned stack once per dispatch; a layer
  scan inside the loop would slice (copy) every layer's weights again at every token.
  Default: for decoder-only models with scan_layers and n_layers <= MAX_UNROLLED_LAYERS
  (compile time grows with depth).
  An encoder-decoder config (`model.arch == "encoder_decoder"`) builds the subclass in
  infer/seq2seq_decode.py: prompts are sources, its cache also holds cross-attention K/V.
  """

  def __new__(cls, config: ModelConfig, *args, **kwargs):
    del args, kwargs
    if cls is Decoder and config.arch == "encoder_decoder":
      from infer.seq2seq_decode import Seq2SeqDecoder  # pylint: disable=g-import-not-at-top
      cls = Seq2SeqDecoder
    return super().__new__(cls)

  def __init__(self, config: ModelConfig, mesh: jax.sharding.Mesh,
               peft: PeftConfig = PeftConfig(), quant: QuantConfig = QuantConfig(),
               unroll_layers: bool | None = None):
    self.config = config
    self.mesh = mesh
    self.peft = peft
    self.quant = quant
    self.n_prompt = peft.n_prompt  # soft-prompt slots at the front of every cache row
    self.model = Transformer(config, peft, quant)  # quant: int8 / int4 params decode as such
    if unroll_layers is None:  # the unstacked layout is the decoder-only Transformer's
      unroll_layers = config.arch == "decoder" and config.n_layers <= MAX_UNROLLED_LAYERS
    self.unroll_layers = bool(unroll_layers and config.scan_layers)
    self.loop_model = (Transformer(dataclasses.replace(config, scan_layers=False), peft, quant)
                       if self.unroll_layers else self.model)
    self.trace_count = 0  # incremented on every (re)trace; tests check it stays put
    self.steps_per_dispatch = STEPS_PER_DISPATCH
    self.steps_per_stop_check = STEPS_PER_STOP_CHECK
    self._prefill = jax.jit(self._prefill_fn, static_argnames=("capacity",))
    self._decode_step = jax.jit(self._decode_step_fn, donate_argnums=(1,))
    self._start = jax.jit(self._start_fn, donate_argnums=(0,))
    self._chunk = jax.jit(self._chunk_fn, static_argnames=("steps",), donate_argnums=(1,))
    self._score = jax.jit(self._score_fn)
    self._beam_programs = {}

  # -- jitted bodies ------------------------------------------------------------------------

  def _cache_sharding(self, cache):
    axes = cache_logical_axes(self.config)
    return {name: jax.sharding.NamedSharding(
        self.mesh, sharding.logical_spec(axes[name], value.shape, self.mesh))
            for name, value in cache.items()}

  def _prefill_fn(self, params, tokens_BL, lengths_B, capacity: int):
    self.trace_count += 1
    cache = init_cache(self.config, tokens_BL.shape[0], capacity)
    cache = jax.lax.with_sharding_constraint(cache, self._cache_sharding(cache))
    logits_B1V, _, cache = self.model.apply({"params": params}, tokens_BL, cache=cache,
                                            prepend_prompt=True, logits_at_B=lengths_B - 1)
    cache = dict(cache, lengths=lengths_B + self.n_prompt)
    return logits_B1V[:, 0], cache

  def _decode_step_fn(self, params, cache, last_tokens_B, rng, params_sampling):
    self.trace_count += 1
    logits_B1V, _, cache = self.model.apply({"params": params}, last_tokens_B[:, None],
                                            cache=cache, prepend_prompt=False)
    tokens_B, logprobs_B = sampling.sample_tokens_with_logprobs(
        rng, logits_B1V[:, 0], params_sampling)
    return tokens_B, logprobs_B, cache

  def _start_fn(self, cache, logits_BV, rng, params_sampling, caps_B, eos_id):
    self.trace_count += 1
    return sample_loop.start_loop(cache, logits_BV, rng, params_sampling, caps_B, eos_id)

  def _chunk_fn(self, params, loop, rng, params_sampling, caps_B, eos_id, steps: int):
    self.trace_count += 1
    return sample_loop.sample_chunk(self._loop_step_fn(params), loop, rng, params_sampling,
                                    caps_B, eos_id, steps)

  def _loop_step_fn(self, params):
    """step_fn(cache, tokens_T) -> (logits_TV, cache) for a loop, weights laid out once."""
    if self.unroll_layers:
      params = unstack_layer_params(params, self.config)

    def step(cache, last_tokens_T):
      logits_T1V, _, cache = self.loop_model.apply(
          {"params": params}, last_tokens_T[:, None], cache=cache, prepend_prompt=False)
      return logits_T1V[:, 0], cache
    return step

  def _score_fn(self, params, tokens_BL):
    self.trace_count += 1
    logits_BLV, _ = self.model.apply({"params": params}, tokens_BL)
    logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp_BLV[:, :-1], tokens_BL[:, 1:, None], axis=-1)[..., 0]

  # -- public API ---------------------------------------------------------------------------

  def prefill(self, params, prompts: Sequence[Sequence[int]], max_new_tokens: int):
    """Pads prompts to a bucket and runs the prefill; returns (last_logits_BV, cache)."""
    tokens_BL, lengths_B, capacity = self._pad_prompts(prompts, max_new_tokens)
    with sharding.use_mesh(self.mesh):
      return self._prefill(params, tokens_BL, lengths_B, capacity)

  def decode_step(self, params, cache, last_tokens_B, rng, params_sampling):
    with sharding.use_mesh(self.mesh):
      return self._decode_step(params, cache, last_tokens_B, rng, params_sampling)

  def _pad_prompts(self, prompts, max_new_tokens: int):
    if not prompts:
      raise ValueError("no prompts given")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
      raise ValueError("empty prompt: give at least one token (e.g. start with the BOS/EOS id)")
    limit, n_prompt = self.config.max_len, self.n_prompt
    if max(lengths) + n_prompt >= limit:
      soft = f" after the {n_prompt}-vector soft prompt" if n_prompt else ""
      raise ValueError(f"prompt of {max(lengths)} tokens{soft} does not fit the model's "
                       f"context of {limit} tokens with room to generate; shorten the prompt")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    bucket = bucket_length(max(lengths), limit - n_prompt)
    # Rows may generate past the longest prompt's room (each up to its own), so the cache
    # can need the whole context; positions past a row's cap are never read.
    capacity = bucket_length(n_prompt + bucket + max_new_tokens, limit)
    tokens_BL = np.zeros((len(prompts), bucket), np.int32)
    for row, prompt in enumerate(prompts):
      tokens_BL[row, :len(prompt)] = prompt
    return jnp.asarray(tokens_BL), jnp.asarray(lengths, jnp.int32), capacity

  def room(self, prompt) -> int:
    """New tokens a row may generate after `prompt` within the model's context."""
    return self.config.max_len - self.n_prompt - len(prompt)

  def cache_batch_axes(self, cache) -> dict:
    """The batch axis of each cache entry (beam search reorders beams along it)."""
    del cache
    return {"k": 1, "v": 1, "lengths": 0}

  def max_new_tokens_for(self, prompts, requested: int) -> int:
    """Caps the number of new tokens so soft prompt + longest prompt stay in the context."""
    room = self.config.max_len - self.n_prompt - max(len(p) for p in prompts)
    return max(1, min(requested, room))

  def generate(self, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
               params_sampling: sampling.SamplingParams, seed: int = 0,
               eos_id: int | None = None,
               stop_fn: Callable[[int, list[int]], bool] | None = None) -> Generation:
    """Samples continuations; rows stop at eos, when stop_fn(row, tokens) is true, or at length.

    Sampling runs on the device in chunks of `steps_per_dispatch` tokens
    (`steps_per_stop_check` with a stop_fn, checked on the host after each chunk; each
    chunk size compiles once per shape); generation ends when every row has finished.
    The t-th new token of every row is drawn with fold_in(key(seed), t), so results do
    not depend on the chunking.
    """
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if params_sampling.batch_size != len(prompts):
      raise ValueError(f"sampling params have {params_sampling.batch_size} rows for "
                       f"{len(prompts)} prompts; build them with make_sampling_params(batch=...)")
    # Each row gets what it asked for, up to its own room in the context: a short prompt
    # batched with a long one is not cut to the long one's room.
    caps = [max(1, min(max_new_tokens, self.room(p))) for p in prompts]
    start = time.perf_counter()
    logits_BV, cache = self.prefill(params, prompts, max(caps))
    jax.block_until_ready(logits_BV)
    prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()
    batch = len(prompts)
    steps = self.steps_per_stop_check if stop_fn is not None else self.steps_per_dispatch
    caps_B = jnp.asarray(caps, jnp.int32)
    eos = jnp.int32(sample_loop.NO_EOS if eos_id is None else eos_id)
    rng = jax.random.key(seed)
    out_tokens = [[] for _ in range(batch)]
    out_logprobs = [[] for _ in range(batch)]
    reasons = [None] * batch
    with sharding.use_mesh(self.mesh):
      loop, token_B, logprob_B = self._start(cache, logits_BV, rng, params_sampling, caps_B,
                                             eos)
      tokens_BK, logprobs_BK = token_B[:, None], logprob_B[:, None]
      counts_B = np.zeros(batch, np.int64)
      while True:
        tokens_BK, logprobs_BK, new_counts_B = jax.device_get(
            (tokens_BK, logprobs_BK, loop.counts_B))
        stopped = self._collect(tokens_BK, logprobs_BK, new_counts_B - counts_B, out_tokens,
                                out_logprobs, reasons, eos_id, stop_fn, caps)
        counts_B = new_counts_B
        if all(r is not None for r in reasons):
          break
        if stopped:
          loop = loop._replace(finished_B=jnp.asarray([r is not None for r in reasons]))
        loop, tokens_BK, logprobs_BK = self._chunk(params, loop, rng, params_sampling, caps_B,
                                                   eos, steps=steps)
    decode_steps = int(loop.decode_steps)
    return Generation(tokens=out_tokens, logprobs=out_logprobs, finish_reasons=reasons,
                      prefill_seconds=prefill_seconds,
                      decode_seconds=time.perf_counter() - start, decode_steps=decode_steps)

  @staticmethod
  def _collect(tokens_BK, logprobs_BK, new_B, out_tokens, out_logprobs, reasons, eos_id,
               stop_fn, caps) -> bool:
    """Appends each row's new tokens of a chunk; returns whether a stop_fn ended a row."""
    stopped = False
    for row in range(len(out_tokens)):
      for token, logprob in zip(tokens_BK[row, :new_B[row]].tolist(),
                                logprobs_BK[row, :new_B[row]].tolist()):
        if reasons[row] is not None:
          break
        out_tokens[row].append(token)
        out_logprobs[row].append(logprob)
        if eos_id is not None and token == eos_id:
          reasons[row] = "eos"
        elif stop_fn is not None and stop_fn(row, out_tokens[row]):
          reasons[row] = stopped = "stop"
        elif len(out_tokens[row]) >= caps[row]:
          reasons[row] = "length"
    return bool(stopped)

  def beam_search(self, params, prompts, max_new_tokens: int, num_beams: int,
                  length_penalty: float = 1.0, eos_id: int | None = None) -> Generation:
    """Beam search; returns the best hypothesis per prompt and its length-penalised score."""
    max_new_tokens = self.max_new_tokens_for(prompts, max_new_tokens)
    logits_BV, cache = self.prefill(params, prompts, max_new_tokens)
    # The length penalty is traced like the sampling knobs: a new value does not recompile.
    key = (num_beams, max_new_tokens, eos_id)
    if key not in self._beam_programs:
      axes = self.cache_batch_axes(cache)

      def run(params, cache, logits_BV, penalty):
        self.trace_count += 1
        return beam_search(
            self._loop_step_fn(params), cache, logits_BV,
            num_beams=num_beams, max_new_tokens=max_new_tokens, eos_id=eos_id,
            length_penalty=penalty, batch_axis=axes)
      self._beam_programs[key] = jax.jit(run)
    with sharding.use_mesh(self.mesh):
      out = jax.device_get(self._beam_programs[key](
          params, cache, logits_BV, jnp.float32(length_penalty)))
    tokens, logprobs, reasons, scores = [], [], [], []
    for row in range(len(prompts)):
      length = int(out.lengths[row, 0])
      seq = out.sequences[row, 0, :length].tolist()
      tokens.append(seq)
      logprobs.append([])
      reasons.append("eos" if eos_id is not None and seq and seq[-1] == eos_id else "length")
      scores.append(float(out.scores[row, 0]))
    return Generation(tokens=tokens, logprobs=logprobs, finish_reasons=reasons, scores=scores)

  def score(self, params, prompts: Sequence[Sequence[int]],
            continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per-token log-likelihood of each continuation given its prompt (one forward pass)."""
    rows = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    if any(not c for c in continuations) or any(not p for p in prompts):
      raise ValueError("score needs a non-empty prompt and continuation for every row")
    longest = max(len(r) for r in rows)
    room = self.config.max_len - self.n_prompt
    if longest > room:
      soft = f" (after the {self.n_prompt}-vector soft prompt)" if self.n_prompt else ""
      raise ValueError(f"prompt + continuation of {longest} tokens exceeds the context "
                       f"{self.config.max_len}{soft}")
    width = bucket_length(longest, room)
    tokens_BL = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
      tokens_BL[i, :len(row)] = row
    with sharding.use_mesh(self.mesh):
      logp_BL = np.asarray(self._score(params, jnp.asarray(tokens_BL)))
    return [logp_BL[i, len(p) - 1:len(p) - 1 + len(c)]
            for i, (p, c) in enumerate(zip(prompts, continuations))]

  def best_of_n(self, params, prompts, max_new_tokens: int,
                params_sampling: sampling.SamplingParams, n: int, seed: int = 0,
                eos_id: int | None = None,
                scorer: Callable[[list[int], list[int], list[float]], float] | None = None
                ) -> Generation:
    """Draws n samples per prompt and keeps the best under `scorer(prompt, tokens, logprobs)`.

    The default scorer is the model's own mean per-token log-likelihood; a reward model
    plugs in the same way.
    """
    if n < 1:
      raise ValueError(f"best-of-N needs n >= 1, got {n}")
    if params_sampling.batch_size != len(prompts):
      raise ValueError(f"sampling params have {params_sampling.batch_size} rows for "
                       f"{len(prompts)} prompts")
    repeated = [p for p in prompts for _ in range(n)]
    params_rep = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), params_sampling)
    draws = self.generate(params, repeated, max_new_tokens, params_rep, seed, eos_id)
    scorer = scorer or _mean_logprob_scorer
    tokens, logprobs, reasons, scores = [], [], [], []
    for i, prompt in enumerate(prompts):
      candidates = range(i * n, (i + 1) * n)
      row_scores = [scorer(prompt, draws.tokens[j], draws.logprobs[j]) for j in candidates]
      best = candidates[int(np.argmax(row_scores))]
      tokens.append(draws.tokens[best])
      logprobs.append(draws.logprobs[best])
      reasons.append(draws.finish_reasons[best])
      scores.append(float(max(row_scores)))
    return Generation(tokens=tokens, logprobs=logprobs, finish_reasons=reasons, scores=scores,
                      prefill_seconds=draws.prefill_seconds,
                      decode_seconds=draws.decode_seconds, decode_steps=draws.decode_steps)


def _mean_logprob_scorer(prompt, tokens, logprobs) -> float:
  del prompt, tokens
  mask = jnp.ones((1, len(logprobs)))
  return float(mean_logprob_score(jnp.asarray([logprobs]), mask)[0])

