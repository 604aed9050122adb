"""MoE token dispatch within one group of tokens: capacity buffers or dropless ragged matmuls.

Both paths take the routing decision (`expert_TK`, `weight_TK`) and return
y_T = sum_k weight_Tk * expert_{expert_Tk}(x_T) over the assignments that were kept.

Expert weights are a dict of arrays stacked on a leading E axis:
swiglu {"wi_gate", "wi_up": [E, D, F], "wo": [E, F, D]}; gelu/relu {"wi", "wo"}.
"""

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def ffn(x, weights: dict, activation: str, matmul: Callable):
  """The FFN math shared by experts and the shared expert; `matmul(x, w)` does the contraction."""
  if activation == "swiglu":
    h = nn.silu(matmul(x, weights["wi_gate"])) * matmul(x, weights["wi_up"])
  elif activation == "gelu":
    h = nn.gelu(matmul(x, weights["wi"]))
  elif activation == "relu":
    h = nn.relu(matmul(x, weights["wi"]))
  else:
    raise ValueError(f"unknown activation {activation!r}; use swiglu, gelu or relu")
  return matmul(h, weights["wo"])


def buffer_ffn(x_ECD, weights: dict, activation: str):
  """Experts applied to their [E, C, D] buffers with batched einsums."""
  return ffn(x_ECD, weights, activation, lambda a, w: jnp.einsum("ecd,edf->ecf", a, w))


def capacity(n_tokens: int, k: int, n_experts: int, capacity_factor: float) -> int:
  """Slots per expert in one group: ceil(capacity_factor * T * k / E), clipped to [1, T].

  No expert can receive more than T assignments (a token picks distinct experts), so the
  upper clip never changes which tokens are kept.
  """
  c = math.ceil(capacity_factor * n_tokens * k / n_experts)
  return max(1, min(c, n_tokens))


def assign_slots(expert_TK: jax.Array, n_experts: int, capacity_: int):
  """Buffer slot of every assignment: (slot_TK, keep_TK).

  Priority: all first choices before all second choices (and so on), then token order.
  An assignment whose position in its expert's queue reaches `capacity_` is dropped and
  gets slot index E*C (one past the last buffer row). Kept slots are e*C + position.
  """
  n_tokens, k = expert_TK.shape
  expert_S = expert_TK.T.reshape(-1)
  onehot_SE = jax.nn.one_hot(expert_S, n_experts, dtype=jnp.int32)
  position_S = jnp.sum(jnp.cumsum(onehot_SE, axis=0) * onehot_SE, axis=-1) - 1
  keep_S = position_S < capacity_
  slot_S = jnp.where(keep_S, expert_S * capacity_ + position_S, n_experts * capacity_)
  return slot_S.reshape(k, n_tokens).T, keep_S.reshape(k, n_tokens).T


def capacity_moe(x_TD, expert_TK, weight_TK, n_experts: int, capacity_: int,
                 expert_fn: Callable):
  """Capacity dispatch: gather tokens into [E, C, D], run `expert_fn`, gather back.

  Returns (y_TD, n_dropped). Dropped assignments contribute zero. `expert_fn` maps the
  [E, C, D] buffer to expert outputs of the same shape (locally, or through an all-to-all).
  """
  n_tokens, d = x_TD.shape
  n_slots = n_experts * capacity_
  slot_TK, keep_TK = assign_slots(expert_TK, n_experts, capacity_)
  token_TK = jnp.broadcast_to(jnp.arange(n_tokens, dtype=jnp.int32)[:, None], slot_TK.shape)
  token_X = jnp.full((n_slots,), n_tokens, jnp.int32).at[slot_TK.reshape(-1)].set(
      token_TK.reshape(-1), mode="drop")
  x_pad = jnp.concatenate([x_TD, jnp.zeros((1, d), x_TD.dtype)])
  x_ECD = x_pad[token_X].reshape(n_experts, capacity_, d)
  out_ECD = expert_fn(x_ECD)
  out_pad = jnp.concatenate([out_ECD.reshape(n_slots, d), jnp.zeros((1, d), out_ECD.dtype)])
  y_TD = _combine(out_pad[slot_TK], weight_TK, x_TD.dtype)
  return y_TD, jnp.sum(~keep_TK).astype(jnp.int32)


def dropless_moe(x_TD, expert_TK, weight_TK, weights: dict, activation: str):
  """Dropless dispatch: sort assignments by expert, grouped matmuls via lax.ragged_dot, unsort.

  Returns y_TD. Exact (no capacity), but ragged_dot is slow on GPUs (see MoeMlp).
  """
  n_tokens, k = expert_TK.shape
  n_experts = _n_experts(weights)
  expert_S = expert_TK.reshape(-1)
  order_S = jnp.argsort(expert_S, stable=True)
  x_SD = x_TD[order_S // k]
  group_sizes_E = jnp.bincount(expert_S, length=n_experts).astype(jnp.int32)
  matmul = functools.partial(_ragged_matmul, group_sizes_E=group_sizes_E)
  out_SD = ffn(x_SD, weights, activation, matmul)
  inverse_S = jnp.zeros_like(order_S).at[order_S].set(
      jnp.arange(order_S.shape[0], dtype=order_S.dtype))
  out_TKD = out_SD[inverse_S].reshape(n_tokens, k, -1)
  return _combine(out_TKD, weight_TK, x_TD.dtype)


def _ragged_matmul(x_SD, w_EDF, group_sizes_E):
  return jax.lax.ragged_dot(x_SD, w_EDF, group_sizes_E)


def _combine(out_TKD, weight_TK, dtype):
  y_TD = jnp.einsum("tk,tkd->td", weight_TK.astype(jnp.float32), out_TKD.astype(jnp.float32))
  return y_TD.astype(dtype)


def _n_experts(weights: dict) -> int:
  return weights["wo"].shape[0]
