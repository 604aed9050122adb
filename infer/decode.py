"""Jitted prefill and decode steps over an explicit KV cache, and the generation loops.

`Decoder(config, mesh, peft)` compiles, per (batch, prompt bucket, cache capacity):
  prefill(params, tokens_BL, lengths_B) -> (last_logits_BV, cache)
  decode_step(params, cache, last_tokens_B, rng, sampling) -> (tokens_B, logprobs_B, cache)
The cache is donated to decode_step. Sampling knobs are traced arrays, so changing
temperature / top-k / top-p / seed never recompiles; prompts are right-padded to
power-of-two buckets so prompts of different lengths reuse programs. With prompt tuning
the prefill prepends the P soft-prompt vectors, so the cache holds P + prompt + new tokens.
"""

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infer import sampling
from infer.beam_search import beam_search
from infer.best_of_n import mean_logprob_score
from model import sharding
from model.attention import cache_logical_axes, init_cache
from model.config import ModelConfig
from model.peft import PeftConfig
from model.quant import QuantConfig
from model.transformer import Transformer

MIN_BUCKET = 16
_STOP_CHECK_EVERY = 8


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
  """Prefill / decode programs for one model config on one mesh."""

  def __init__(self, config: ModelConfig, mesh: jax.sharding.Mesh,
               peft: PeftConfig = PeftConfig(), quant: QuantConfig = QuantConfig()):
    self.config = config
    self.mesh = mesh
    self.peft = peft
    self.quant = quant
    self.n_prompt = peft.n_prompt  # soft-prompt slots at the front of every cache row
    self.model = Transformer(config, peft, quant)  # quant: int8 / int4 params decode as such
    self.trace_count = 0  # incremented on every (re)trace; tests check it stays put
    self._prefill = jax.jit(self._prefill_fn, static_argnames=("capacity",))
    self._decode_step = jax.jit(self._decode_step_fn, donate_argnums=(1,))
    self._sample = jax.jit(sampling.sample_tokens_with_logprobs)
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
    logits_BLV, _, cache = self.model.apply({"params": params}, tokens_BL, cache=cache,
                                            prepend_prompt=True)
    cache = dict(cache, lengths=lengths_B + self.n_prompt)
    last_BV = jnp.take_along_axis(logits_BLV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
    return last_BV, cache

  def _decode_step_fn(self, params, cache, last_tokens_B, rng, params_sampling):
    self.trace_count += 1
    logits_B1V, _, cache = self.model.apply({"params": params}, last_tokens_B[:, None],
                                            cache=cache, prepend_prompt=False)
    tokens_B, logprobs_B = sampling.sample_tokens_with_logprobs(
        rng, logits_B1V[:, 0], params_sampling)
    return tokens_B, logprobs_B, cache

  def _logits_step_fn(self, params, cache, last_tokens_T):
    logits_T1V, _, cache = self.model.apply({"params": params}, last_tokens_T[:, None],
                                            cache=cache, prepend_prompt=False)
    return logits_T1V[:, 0], cache

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

  def max_new_tokens_for(self, prompts, requested: int) -> int:
    """Caps the number of new tokens so soft prompt + longest prompt stay in the context."""
    room = self.config.max_len - self.n_prompt - max(len(p) for p in prompts)
    return max(1, min(requested, room))

  def generate(self, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
               params_sampling: sampling.SamplingParams, seed: int = 0,
               eos_id: int | None = None,
               stop_fn: Callable[[int, list[int]], bool] | None = None) -> Generation:
    """Samples continuations; rows stop at eos, when stop_fn(row, tokens) is true, or at length.

    Generation ends when every row has finished (checked every few steps).
    """
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    # Each row gets what it asked for, up to its own room in the context: a short prompt
    # batched with a long one is not cut to the long one's room.
    caps = [max(1, min(max_new_tokens, self.config.max_len - self.n_prompt - len(p)))
            for p in prompts]
    max_new_tokens = max(caps)
    batch = len(prompts)
    start = time.perf_counter()
    logits_BV, cache = self.prefill(params, prompts, max_new_tokens)
    jax.block_until_ready(logits_BV)
    prefill_seconds = time.perf_counter() - start
    start, steps = time.perf_counter(), 0
    rng = jax.random.key(seed)
    with sharding.use_mesh(self.mesh):
      tokens_B, logprobs_B = self._sample(jax.random.fold_in(rng, 0), logits_BV, params_sampling)
    pending = [(tokens_B, logprobs_B)]
    out_tokens = [[] for _ in range(batch)]
    out_logprobs = [[] for _ in range(batch)]
    reasons = [None] * batch
    for t in range(1, max_new_tokens + 1):
      if len(pending) == _STOP_CHECK_EVERY or t == max_new_tokens:
        self._collect(pending, out_tokens, out_logprobs, reasons, eos_id, stop_fn, caps)
        pending = []
        if all(r is not None for r in reasons) or t == max_new_tokens:
          break
      tokens_B, logprobs_B, cache = self.decode_step(
          params, cache, tokens_B, jax.random.fold_in(rng, t), params_sampling)
      pending.append((tokens_B, logprobs_B))
      steps += 1
    reasons = [r or "length" for r in reasons]
    return Generation(tokens=out_tokens, logprobs=out_logprobs, finish_reasons=reasons,
                      prefill_seconds=prefill_seconds,
                      decode_seconds=time.perf_counter() - start, decode_steps=steps)

  @staticmethod
  def _collect(pending, out_tokens, out_logprobs, reasons, eos_id, stop_fn, caps):
    for tokens_B, logprobs_B in jax.device_get(pending):
      for row, (token, logprob) in enumerate(zip(tokens_B.tolist(), logprobs_B.tolist())):
        if reasons[row] is not None:
          continue
        out_tokens[row].append(token)
        out_logprobs[row].append(logprob)
        if eos_id is not None and token == eos_id:
          reasons[row] = "eos"
        elif stop_fn is not None and stop_fn(row, out_tokens[row]):
          reasons[row] = "stop"
        elif len(out_tokens[row]) >= caps[row]:
          reasons[row] = "length"

  def beam_search(self, params, prompts, max_new_tokens: int, num_beams: int,
                  length_penalty: float = 1.0, eos_id: int | None = None) -> Generation:
    """Beam search; returns the best hypothesis per prompt and its length-penalised score."""
    max_new_tokens = self.max_new_tokens_for(prompts, max_new_tokens)
    logits_BV, cache = self.prefill(params, prompts, max_new_tokens)
    # The length penalty is traced like the sampling knobs: a new value does not recompile.
    key = (num_beams, max_new_tokens, eos_id)
    if key not in self._beam_programs:
      def run(params, cache, logits_BV, penalty):
        self.trace_count += 1
        return beam_search(
            functools.partial(self._logits_step_fn, params), cache, logits_BV,
            num_beams=num_beams, max_new_tokens=max_new_tokens, eos_id=eos_id,
            length_penalty=penalty, batch_axis={"k": 1, "v": 1, "lengths": 0})
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
    return Generation(tokens=tokens, logprobs=logprobs, finish_reasons=reasons, scores=scores)


def _mean_logprob_scorer(prompt, tokens, logprobs) -> float:
  del prompt, tokens
  mask = jnp.ones((1, len(logprobs)))
  return float(mean_logprob_score(jnp.asarray([logprobs]), mask)[0])

