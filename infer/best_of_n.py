"""Best-of-N decoding: draw N samples per prompt, score each, keep the best.

Generic over what a "sample" is: any pytree of arrays with leading batch dim B (tokens,
lengths, per-token log-probs...). The scorer is pluggable; the usual one is the model's
own mean per-token log-likelihood, `mean_logprob_score`, over log-probs the caller
collected while sampling (sample_tokens_with_logprobs) or recomputed with a forward pass.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class BestOfN(NamedTuple):
  best: Any  # the winning sample per row: the sample pytree, leading dim B
  best_index: jax.Array  # [B] int32, which of the N draws won
  scores: jax.Array  # [B, N] float32, every draw's score
  samples: Any  # all draws: the sample pytree with leaves [B, N, ...]


def mean_logprob_score(logprobs_BT: jax.Array, mask_BT: jax.Array) -> jax.Array:
  """Mean log-prob over the generated tokens where mask is true; float32 [B]."""
  mask_BT = mask_BT.astype(jnp.float32)
  total_B = jnp.sum(logprobs_BT.astype(jnp.float32) * mask_BT, axis=-1)
  return total_B / jnp.maximum(jnp.sum(mask_BT, axis=-1), 1.0)


def select_best(samples_BN: Any, scores_BN: jax.Array) -> BestOfN:
  """Picks, per row, the draw with the highest score (lowest draw index on ties)."""
  if scores_BN.ndim != 2:
    raise ValueError(f"scores must be [batch, n], got shape {scores_BN.shape}.")
  best_B = jnp.argmax(scores_BN, axis=1).astype(jnp.int32)
  rows_B = jnp.arange(scores_BN.shape[0])
  best = jax.tree.map(lambda x: x[rows_B, best_B], samples_BN)
  return BestOfN(best=best, best_index=best_B, scores=scores_BN.astype(jnp.float32),
                 samples=samples_BN)


def best_of_n(sample_fn: Callable[[jax.Array], Any], score_fn: Callable[[Any], jax.Array],
              n: int, rng: jax.Array) -> BestOfN:
  """Calls sample_fn(key) for n independent keys, scores each draw, keeps the best.

  sample_fn(key) -> sample pytree (leading dim B); score_fn(sample) -> [B] scores,
  higher is better. Traceable under jit when sample_fn and score_fn are (the n draws
  are a Python loop, unrolled under jit; for large n, tile the prompts to B * n rows,
  sample once and call select_best instead).
  """
  if n < 1:
    raise ValueError(f"best_of_n needs n >= 1, got {n}.")
  draws, scores = [], []
  for key in jax.random.split(rng, n):
    sample = sample_fn(key)
    draws.append(sample)
    scores.append(jnp.asarray(score_fn(sample), jnp.float32))
  samples_BN = jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *draws)
  return select_best(samples_BN, jnp.stack(scores, axis=1))
