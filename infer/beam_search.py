"""Model-agnostic beam search as one jax.lax.while_loop (jits once per shape).

The model enters only through `step_fn(state, tokens_T) -> (logits_TV, new_state)` with
T = B * W rows (W = num_beams, beam-major within each batch row: row b * W + w); `state`
is any pytree (typically the KV cache). Beams are reordered by gathering every
non-scalar leaf of `state` along `batch_axis` with the flat parent indices; scalar leaves
(e.g. a shared cache position) are passed through unchanged.

Scoring: live beams are ranked by cumulative log-probability. A hypothesis ends when it
emits `eos_id` (the eos token is part of it and counts in its length) or reaches
`max_new_tokens`; it then enters a pool of the W best finished hypotheses, scored with
the simple length penalty  score = sum_logprob / length ** length_penalty
(length_penalty 0 = raw log-probability, 1 = mean per-token log-probability).

Early stopping: log-probs are <= 0, so a live beam with cumulative log-prob s can at
best finish with score  s / Lb ** length_penalty,  where Lb = max_new_tokens when
length_penalty >= 0 (a longer denominator only raises a negative score) and Lb = the
next length when length_penalty < 0. A batch row is done once its pool is full and
this bound for its best live beam is <= the worst pooled score (or no live beam is
left); the loop stops when every row is done, and the result equals running all
max_new_tokens steps (early_stopping=False).
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

StepFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]
NEG_INF = -jnp.inf


class BeamSearchOutput(NamedTuple):
  sequences: jax.Array  # [B, W, max_new_tokens] int32, pad_id after the end, best first
  scores: jax.Array  # [B, W] float32, length-penalised; -inf for empty slots
  lengths: jax.Array  # [B, W] int32, tokens including eos
  num_steps: jax.Array  # scalar int32, tokens generated before the loop stopped


def _axes_tree(state, batch_axis):
  """One batch axis per leaf of `state`: an int for all, or a pytree prefix of ints."""
  if isinstance(batch_axis, int):
    return jax.tree.map(lambda _: batch_axis, state)
  return jax.tree.map(lambda axis, sub: jax.tree.map(lambda _: axis, sub), batch_axis, state)


def _gather_rows(state, flat_idx_T, batch_axis):
  return jax.tree.map(
      lambda x, axis: x if jnp.ndim(x) == 0 else jnp.take(x, flat_idx_T, axis=axis),
      state, _axes_tree(state, batch_axis))


def _length_penalty(length, length_penalty: float):
  return jnp.asarray(length, jnp.float32) ** length_penalty


def beam_search(step_fn: StepFn, init_state: Any, first_logits_BV: jax.Array,
                num_beams: int, max_new_tokens: int, eos_id: Optional[int],
                length_penalty: float = 1.0, pad_id: int = 0, batch_axis: Any = 0,
                early_stopping: bool = True) -> BeamSearchOutput:
  """Returns the num_beams best hypotheses per batch row, best first.

  init_state: the state after the prompt, leaves with batch size B along `batch_axis`
    (an int for every leaf, or a pytree prefix of ints, e.g. {"k": 1, "v": 1, "lengths": 0})
    (they are repeated W times here); first_logits_BV: next-token logits after the prompt.
  eos_id: end-of-sequence id, or None to always generate max_new_tokens.
  num_beams, max_new_tokens, eos_id, pad_id, batch_axis: static Python values (close
    over them or mark them static when jitting); length_penalty and early_stopping may
    be traced, so changing them does not recompile.
  early_stopping: stop once no live beam can enter the finished pool (see module doc);
    False runs all max_new_tokens steps (same result, for checking).
  step_fn is not called after the last token, so a cache needs room for only
  max_new_tokens - 1 decoded positions beyond the prompt.
  """
  if num_beams < 1 or max_new_tokens < 1:
    raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {num_beams}, "
                     f"{max_new_tokens}.")
  if first_logits_BV.ndim != 2:
    raise ValueError(f"first_logits must be [batch, vocab], got {first_logits_BV.shape}; "
                     "pass the prompt's last-position logits.")
  batch, vocab = first_logits_BV.shape
  W, T = num_beams, max_new_tokens
  eos = -1 if eos_id is None else int(eos_id)

  axes = _axes_tree(init_state, batch_axis)

  def check_leaf(x, axis):
    if jnp.ndim(x) and x.shape[axis] != batch:
      raise ValueError(f"init_state leaf of shape {x.shape} has size {x.shape[axis]} "
                       f"on batch_axis={axis}, expected batch {batch}; pass the "
                       "un-repeated prefill state or set batch_axis.")
  jax.tree.map(check_leaf, init_state, axes)
  state = jax.tree.map(
      lambda x, axis: x if jnp.ndim(x) == 0 else jnp.repeat(x, W, axis=axis), init_state, axes)
  logits_TV = jnp.repeat(first_logits_BV.astype(jnp.float32), W, axis=0)
  live_logp_BW = jnp.full((batch, W), NEG_INF, jnp.float32).at[:, 0].set(0.0)

  carry = dict(
      step=jnp.int32(0), done=jnp.bool_(False), state=state, logits=logits_TV,
      live_seq=jnp.full((batch, W, T), pad_id, jnp.int32), live_logp=live_logp_BW,
      fin_seq=jnp.full((batch, W, T), pad_id, jnp.int32),
      fin_score=jnp.full((batch, W), NEG_INF, jnp.float32),
      fin_len=jnp.zeros((batch, W), jnp.int32))

  def cond(c):
    return (c["step"] < T) & ~c["done"]

  def body(c):
    step = c["step"]
    logp_BWV = jax.nn.log_softmax(c["logits"].reshape(batch, W, vocab), axis=-1)
    cand_BX = (c["live_logp"][:, :, None] + logp_BWV).reshape(batch, W * vocab)
    num_cand = min(2 * W, W * vocab)
    cand_logp_BC, cand_idx_BC = jax.lax.top_k(cand_BX, num_cand)
    parent_BC = cand_idx_BC // vocab
    token_BC = (cand_idx_BC % vocab).astype(jnp.int32)
    cand_seq_BCT = jnp.take_along_axis(c["live_seq"], parent_BC[:, :, None], axis=1)
    cand_seq_BCT = cand_seq_BCT.at[:, :, step].set(token_BC)
    is_eos_BC = token_BC == eos
    length = step + 1

    ends_BC = is_eos_BC | (length == T)
    new_fin_BC = jnp.where(ends_BC, cand_logp_BC / _length_penalty(length, length_penalty),
                           NEG_INF)
    pool_score = jnp.concatenate([c["fin_score"], new_fin_BC], axis=1)
    pool_seq = jnp.concatenate([c["fin_seq"], cand_seq_BCT], axis=1)
    pool_len = jnp.concatenate(
        [c["fin_len"], jnp.full(new_fin_BC.shape, length, jnp.int32)], axis=1)
    fin_score_BW, pick_BW = jax.lax.top_k(pool_score, W)
    fin_seq = jnp.take_along_axis(pool_seq, pick_BW[:, :, None], axis=1)
    fin_len = jnp.take_along_axis(pool_len, pick_BW, axis=1)

    live_cand_BC = jnp.where(is_eos_BC, NEG_INF, cand_logp_BC)
    live_logp_BW, live_pick_BW = jax.lax.top_k(live_cand_BC, W)
    live_seq = jnp.take_along_axis(cand_seq_BCT, live_pick_BW[:, :, None], axis=1)
    live_parent_BW = jnp.take_along_axis(parent_BC, live_pick_BW, axis=1)
    live_token_BW = jnp.take_along_axis(token_BC, live_pick_BW, axis=1)

    best_live_B = live_logp_BW[:, 0]
    bound_len = jnp.where(jnp.asarray(length_penalty) >= 0, T, length + 1)
    bound_B = best_live_B / _length_penalty(bound_len, length_penalty)
    worst_fin_B = fin_score_BW[:, -1]
    row_done_B = (best_live_B == NEG_INF) | ((worst_fin_B > NEG_INF) & (bound_B <= worst_fin_B))
    done = jnp.all(row_done_B) & early_stopping

    def advance(args):
      state, _ = args
      flat_parent_T = (jnp.arange(batch)[:, None] * W + live_parent_BW).reshape(-1)
      state = _gather_rows(state, flat_parent_T, batch_axis)
      logits_TV, state = step_fn(state, live_token_BW.reshape(-1))
      return state, logits_TV.astype(jnp.float32)

    state, logits_TV = jax.lax.cond(
        ~done & (length < T), advance, lambda args: args, (c["state"], c["logits"]))
    return dict(step=length, done=done, state=state, logits=logits_TV, live_seq=live_seq,
                live_logp=live_logp_BW, fin_seq=fin_seq, fin_score=fin_score_BW,
                fin_len=fin_len)

  out = jax.lax.while_loop(cond, body, carry)
  return BeamSearchOutput(sequences=out["fin_seq"], scores=out["fin_score"],
                          lengths=out["fin_len"], num_steps=out["step"])
