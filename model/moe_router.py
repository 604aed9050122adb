"""MoE routing: top-k expert choice, combine weights and the router's auxiliary losses.

All of it runs in float32 on the router logits `logits_TE` (T tokens, E experts).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

WEIGHTINGS = ("softmax_topk", "topk_probs")


class Routing(NamedTuple):
  expert_TK: jax.Array  # int32 expert ids, best choice first.
  weight_TK: jax.Array  # float32 combine weights.
  probs_TE: jax.Array  # float32 full softmax over all experts.


def route(logits_TE: jax.Array, k: int, weighting: str = "softmax_topk") -> Routing:
  """Picks the top-k experts per token and their combine weights.

  weighting:
    "softmax_topk": softmax over the k selected logits (Mixtral); a token's weights sum
      to 1. (Dividing the selected full-softmax probabilities by their sum is the same
      function, so it is not offered separately.)
    "topk_probs": the full-softmax probabilities of the k selected experts, not
      renormalised (Switch / DeepSeek-V2 style): weights sum to less than 1, and the
      router is told how much mass the unselected experts had.
  k == 1 (either weighting): the full-softmax probability of the chosen expert, as in
  Switch Transformer; a softmax over one logit would be a constant 1 and leave the router
  without any gradient from the task loss.
  Ties are broken towards the lower expert id (lax.top_k).
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"router weighting {weighting!r} is not one of {WEIGHTINGS}")
  n_experts = logits_TE.shape[-1]
  if not 1 <= k <= n_experts:
    raise ValueError(f"experts_per_token={k} must be in [1, n_experts={n_experts}]")
  logits_TE = logits_TE.astype(jnp.float32)
  probs_TE = jax.nn.softmax(logits_TE, axis=-1)
  top_logits_TK, expert_TK = jax.lax.top_k(logits_TE, k)
  top_probs_TK = jnp.take_along_axis(probs_TE, expert_TK, axis=-1)
  if k == 1 or weighting == "topk_probs":
    weight_TK = top_probs_TK
  else:
    weight_TK = jax.nn.softmax(top_logits_TK, axis=-1)
  return Routing(expert_TK.astype(jnp.int32), weight_TK, probs_TE)


def assignment_fractions(expert_TK: jax.Array, n_experts: int) -> jax.Array:
  """f_e: share of all T*k token-expert assignments that chose expert e (sums to 1)."""
  counts_E = jnp.sum(jax.nn.one_hot(expert_TK, n_experts, dtype=jnp.float32), axis=(0, 1))
  return counts_E / expert_TK.size


def load_balance_loss(probs_TE: jax.Array, expert_TK: jax.Array) -> jax.Array:
  """Switch/GShard auxiliary loss E * sum_e f_e * P_e (unweighted).

  f_e counts the router's choices before any capacity drop; P_e is the mean router
  probability of expert e. If either f or P is uniform the loss is exactly 1.0; with all
  tokens routed to one expert (k=1) and P concentrated there it approaches E. Only P
  carries gradient (f comes from an argmax).
  """
  n_experts = probs_TE.shape[-1]
  f_E = assignment_fractions(expert_TK, n_experts)
  p_E = jnp.mean(probs_TE.astype(jnp.float32), axis=0)
  return n_experts * jnp.sum(f_E * p_E)


def router_z_loss(logits_TE: jax.Array) -> jax.Array:
  """ST-MoE z-loss: mean over tokens of logsumexp(logits)^2 (unweighted)."""
  lse_T = jax.nn.logsumexp(logits_TE.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.square(lse_T))


def expert_load_cv(expert_TK: jax.Array, n_experts: int) -> jax.Array:
  """Coefficient of variation (std / mean) of assignments per expert; 0 = perfectly even."""
  f_E = assignment_fractions(expert_TK, n_experts)
  return jnp.std(f_E) / jnp.mean(f_E)
