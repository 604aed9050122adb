"""Token samplers for decoding: greedy, temperature, top-k, top-p, and combinations.

Every knob lives in `SamplingParams`, a pytree of traced per-row arrays, so one jitted
decode step serves any mix of methods and values without recompiling.

Order of operations (same as Hugging Face logits warpers):
  1. float32 logits divided by the row's temperature (temperature 0 = greedy: argmax);
  2. top-k keeps the k highest tokens (k == 0 or k >= V keeps all);
  3. top-p keeps the smallest prefix of the remaining tokens, by descending
     probability after renormalisation, whose cumulative probability reaches p; the
     token that crosses p is kept, so a tiny p keeps exactly the argmax and p >= 1
     keeps everything;
  4. a categorical draw from what is left, by inverse CDF: one uniform number per row
     against the cumulative probabilities (a Gumbel-max draw needs one random number per
     vocabulary entry, which dominated CPU decode time).

Ties: tokens are ranked by a stable descending sort, so equal logits are ordered by
lower token id first. Top-k therefore keeps exactly k tokens, and at a top-p boundary
the lower id is kept first. The top-p comparison is exact (preceding mass >= p, both
float32, the mass an exclusive cumulative sum): no tolerance, so p just above a boundary
(p=0.8000006 over probabilities 0.5, 0.3, 0.2) keeps the crossing token as it should. Only
a p within float32 rounding (a few 1e-8) of a cumulative boundary, e.g. exactly 0.8 there,
is decided by how the probabilities rounded; either kept set is then a correct reading of
float32 numbers. Greedy picks the lowest id among equal maxima.
"""

from typing import Sequence, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("greedy", "random", "temperature", "top_k", "top_p", "custom")

PRESETS = {
    "chat": dict(method="top_p", temperature=0.7, top_p=0.9),
    "code": dict(method="greedy"),
    "creative": dict(method="top_k", temperature=1.0, top_k=50),
}

ArrayLike = Union[float, int, Sequence[float], np.ndarray, jax.Array]


@flax.struct.dataclass
class SamplingParams:
  """Per-row sampling knobs; all fields are traced arrays of shape [B].

  temperature: float32, 0 means greedy for that row.
  top_k: int32, 0 means off.
  top_p: float32, 1.0 means off.
  """
  temperature: jax.Array
  top_k: jax.Array
  top_p: jax.Array

  @property
  def batch_size(self) -> int:
    return self.temperature.shape[0]


def _per_row(value: ArrayLike, batch: int, dtype, name: str) -> np.ndarray:
  arr = np.asarray(value, dtype=dtype)
  if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != batch):
    raise ValueError(
        f"{name} must be a scalar or have shape [{batch}] (one value per batch row), "
        f"got shape {arr.shape}.")
  return np.broadcast_to(arr, (batch,)).copy()


def make_sampling_params(batch: int, method: str = "random", temperature: ArrayLike = 1.0,
                         top_k: ArrayLike = 0, top_p: ArrayLike = 1.0) -> SamplingParams:
  """Builds SamplingParams for `batch` rows.

  method: greedy (temperature 0), random (temperature 1, no truncation), temperature
  (given temperature, no truncation), top_k (temperature + top_k), top_p (temperature +
  top_p), custom (all three as given). Values may be scalars or per-row sequences.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown sampling method {method!r}; use one of {METHODS} "
                     f"or a preset via params_from_preset ({sorted(PRESETS)}).")
  if method == "greedy":
    temperature, top_k, top_p = 0.0, 0, 1.0
  elif method == "random":
    temperature, top_k, top_p = 1.0, 0, 1.0
  elif method == "temperature":
    top_k, top_p = 0, 1.0
  elif method == "top_k":
    top_p = 1.0
  elif method == "top_p":
    top_k = 0
  temperature = _per_row(temperature, batch, np.float32, "temperature")
  top_k = _per_row(top_k, batch, np.int32, "top_k")
  top_p = _per_row(top_p, batch, np.float32, "top_p")
  if np.any(temperature < 0) or not np.all(np.isfinite(temperature)):
    raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}.")
  if np.any(top_k < 0):
    raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}.")
  if method == "top_k" and np.any(top_k == 0):
    raise ValueError("method='top_k' needs top_k >= 1; pass top_k=..., or use "
                     "method='temperature' for no truncation.")
  if np.any(top_p <= 0) or np.any(top_p > 1):
    raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}.")
  return SamplingParams(temperature=jnp.asarray(temperature), top_k=jnp.asarray(top_k),
                        top_p=jnp.asarray(top_p))


def params_from_preset(batch: int, name: str) -> SamplingParams:
  """SamplingParams for one of PRESETS ("chat", "code", "creative")."""
  if name not in PRESETS:
    raise ValueError(f"Unknown sampling preset {name!r}; choose from {sorted(PRESETS)}.")
  return make_sampling_params(batch, **PRESETS[name])


def _check_shapes(logits_BV: jax.Array, params: SamplingParams):
  if logits_BV.ndim != 2:
    raise ValueError(f"logits must be [batch, vocab], got shape {logits_BV.shape}; "
                     "take the last position (logits_BLV[:, -1]) first.")
  if params.batch_size != logits_BV.shape[0]:
    raise ValueError(f"SamplingParams has {params.batch_size} rows but logits have "
                     f"{logits_BV.shape[0]}; build them with make_sampling_params(batch=...).")


def categorical(rng: jax.Array, logits_BV: jax.Array) -> jax.Array:
  """One draw per row from softmax(logits_BV) by inverse CDF; int32 [B].

  Row b draws the first token whose cumulative probability exceeds u_b * total with
  u_b ~ U[0, 1); tokens of probability 0 (logit -inf) are never drawn.
  """
  vocab = logits_BV.shape[-1]
  probs_BV = jax.nn.softmax(logits_BV.astype(jnp.float32), axis=-1)
  cdf_BV = jnp.cumsum(probs_BV, axis=-1)
  u_B1 = jax.random.uniform(rng, (logits_BV.shape[0], 1), jnp.float32)
  below_B = jnp.sum(cdf_BV <= u_B1 * cdf_BV[:, -1:], axis=-1)
  last_B = vocab - 1 - jnp.argmax(probs_BV[:, ::-1] > 0, axis=-1)  # guards rounding at u ~ 1
  return jnp.minimum(below_B, last_B).astype(jnp.int32)


def _truncated_sample(rng, scaled_BV, top_k_B, top_p_B):
  """Samples after top-k then top-p masking, working in descending-sorted order."""
  vocab = scaled_BV.shape[-1]
  order_BV = jnp.argsort(-scaled_BV, axis=-1, stable=True)
  sorted_BV = jnp.take_along_axis(scaled_BV, order_BV, axis=-1)
  rank_V = jnp.arange(vocab, dtype=jnp.int32)
  k_B = jnp.where((top_k_B <= 0) | (top_k_B >= vocab), vocab, top_k_B)
  keep_BV = rank_V[None, :] < k_B[:, None]
  sorted_BV = jnp.where(keep_BV, sorted_BV, -jnp.inf)
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  mass_before_BV = jnp.concatenate(  # exclusive cumsum: no cancellation from subtracting
      [jnp.zeros_like(probs_BV[:, :1]), jnp.cumsum(probs_BV[:, :-1], axis=-1)], axis=-1)
  reaches_p_BV = mass_before_BV >= top_p_B[:, None]
  keep_BV = (rank_V[None, :] == 0) | (top_p_B[:, None] >= 1.0) | ~reaches_p_BV
  sorted_BV = jnp.where(keep_BV, sorted_BV, -jnp.inf)
  choice_B = categorical(rng, sorted_BV)
  return jnp.take_along_axis(order_BV, choice_B[:, None], axis=-1)[:, 0]


def sample_tokens(rng: jax.Array, logits_BV: jax.Array, params: SamplingParams) -> jax.Array:
  """Draws one token per row following `params`; returns int32 [B].

  The draw is skipped (lax.switch) when every row is greedy, and the sort needed by
  top-k/top-p when no row truncates.
  """
  _check_shapes(logits_BV, params)
  logits_BV = logits_BV.astype(jnp.float32)
  vocab = logits_BV.shape[-1]
  greedy_B = params.temperature <= 0
  temp_B = jnp.where(greedy_B, 1.0, params.temperature).astype(jnp.float32)
  scaled_BV = logits_BV / temp_B[:, None]
  truncates = jnp.any(~greedy_B & (((params.top_k > 0) & (params.top_k < vocab))
                                   | (params.top_p < 1.0)))
  branch = jnp.where(jnp.all(greedy_B), 0, jnp.where(truncates, 2, 1))
  sampled_B = jax.lax.switch(branch, [
      lambda: jnp.zeros(greedy_B.shape, jnp.int32),
      lambda: categorical(rng, scaled_BV),
      lambda: _truncated_sample(rng, scaled_BV, params.top_k, params.top_p).astype(jnp.int32)])
  greedy_tokens_B = jnp.argmax(logits_BV, axis=-1)
  return jnp.where(greedy_B, greedy_tokens_B, sampled_B).astype(jnp.int32)


def token_logprobs(logits_BV: jax.Array, tokens_B: jax.Array) -> jax.Array:
  """Log-probability of `tokens_B` under softmax(logits) (untempered), float32 [B]."""
  logp_BV = jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BV, tokens_B[:, None].astype(jnp.int32), axis=-1)[:, 0]


def sample_tokens_with_logprobs(rng: jax.Array, logits_BV: jax.Array,
                                params: SamplingParams) -> tuple[jax.Array, jax.Array]:
  """Like sample_tokens, also returning each chosen token's model log-prob (untempered)."""
  tokens_B = sample_tokens(rng, logits_BV, params)
  return tokens_B, token_logprobs(logits_BV, tokens_B)


def _is_stop(tokens_B: jax.Array, eos_id) -> jax.Array:
  stop_ids = jnp.atleast_1d(jnp.asarray(eos_id, dtype=jnp.int32))
  return jnp.any(tokens_B[:, None] == stop_ids[None, :], axis=-1)


def update_finished(finished_B: jax.Array, tokens_B: jax.Array, eos_id) -> jax.Array:
  """Marks rows that just emitted `eos_id` (an id or a sequence of stop ids) as finished."""
  return finished_B | _is_stop(tokens_B, eos_id)


def apply_stop(tokens_B: jax.Array, finished_B: jax.Array, eos_id,
               pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
  """End-of-sequence bookkeeping for one decode step.

  Rows already finished get `pad_id` instead of a new token; rows emitting a stop id
  become finished (the stop token itself is kept). Returns (tokens_B, finished_B).
  """
  tokens_B = jnp.where(finished_B, jnp.asarray(pad_id, tokens_B.dtype), tokens_B)
  return tokens_B, update_finished(finished_B, tokens_B, eos_id)
