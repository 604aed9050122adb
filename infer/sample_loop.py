"""On-device sampling loop: up to K tokens per dispatch inside one `lax.while_loop`.

Model-agnostic like beam_search: the model enters only through
`step_fn(state, tokens_B) -> (logits_BV, new_state)` (one decode step; `state` is any
pytree, typically the KV cache). `start_loop` draws the first token of every row from the
prompt's logits; each iteration of `sample_chunk` then feeds the last tokens through
`step_fn`, draws the next ones and updates the per-row stop conditions (eos, the row's own
new-token cap). The t-th new token is drawn with key `fold_in(rng, t)` (t = 0 for the
prompt's logits), so a row's draws depend only on the seed, not on the chunking. Finished
rows keep being fed their samples (their outputs are discarded), exactly as a
step-per-dispatch loop would, so rows never see each other's stopping; the model is not
run after the last token. Sampling knobs, seed, caps and eos id are traced: no
recompilation when they change. The body has no `lax.cond`, whose branches would copy
the cache every step.

A chunk returns tokens_BK / logprobs_BK for its K iterations; row b's new tokens are the
first `counts_B[b]` (after) - `counts_B[b]` (before) slots. Conditions the device cannot
evaluate (stop strings) are checked on the host between chunks, which then sets
`finished_B` for the rows that stopped before dispatching the next chunk.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from infer import sampling

StepFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]
NO_EOS = -1  # eos_id value that no token matches


class LoopState(NamedTuple):
  """Everything carried from one chunk to the next (a pytree; donate it)."""
  state: Any  # the model's decode state (KV cache), before `last_B` is fed
  last_B: jax.Array  # int32: the last token drawn per row
  step: jax.Array  # int32 scalar: index t of the next token to draw
  finished_B: jax.Array  # bool: row is done (eos, cap, or set by the host)
  counts_B: jax.Array  # int32: tokens emitted so far per row
  decode_steps: jax.Array  # int32 scalar: step_fn calls so far


def _draw(rng, step, logits_BV, params_sampling, finished_B, counts_B, caps_B, eos_id):
  token_B, logprob_B = sampling.sample_tokens_with_logprobs(
      jax.random.fold_in(rng, step), logits_BV, params_sampling)
  live_B = ~finished_B
  counts_B = counts_B + live_B.astype(jnp.int32)
  finished_B = finished_B | (live_B & ((token_B == eos_id) | (counts_B >= caps_B)))
  return token_B, logprob_B, finished_B, counts_B


def start_loop(state: Any, first_logits_BV: jax.Array, rng: jax.Array,
               params_sampling: sampling.SamplingParams, caps_B: jax.Array, eos_id: jax.Array
               ) -> tuple[LoopState, jax.Array, jax.Array]:
  """Draws token 0 of every row from the prompt's logits; returns (loop, token_B, logprob_B).

  caps_B: int32 [B], the most new tokens row b may emit in total (>= 1); eos_id: int32
  scalar (NO_EOS for none).
  """
  if first_logits_BV.ndim != 2:
    raise ValueError(f"first logits must be [batch, vocab], got {first_logits_BV.shape}")
  batch = first_logits_BV.shape[0]
  token_B, logprob_B, finished_B, counts_B = _draw(
      rng, 0, first_logits_BV, params_sampling, jnp.zeros((batch,), bool),
      jnp.zeros((batch,), jnp.int32), jnp.asarray(caps_B, jnp.int32),
      jnp.asarray(eos_id, jnp.int32))
  loop = LoopState(state=state, last_B=token_B, step=jnp.int32(1), finished_B=finished_B,
                   counts_B=counts_B, decode_steps=jnp.int32(0))
  return loop, token_B, logprob_B


def sample_chunk(step_fn: StepFn, loop: LoopState, rng: jax.Array,
                 params_sampling: sampling.SamplingParams, caps_B: jax.Array,
                 eos_id: jax.Array, steps: int
                 ) -> tuple[LoopState, jax.Array, jax.Array]:
  """Runs up to `steps` (static) decode-and-draw iterations, fewer once every row is done.

  Returns (loop, tokens_BK, logprobs_BK) with K = steps; slots past a row's new tokens
  hold draws to ignore (or zeros when the loop ended early).
  """
  batch = loop.last_B.shape[0]
  caps_B = jnp.asarray(caps_B, jnp.int32)
  eos_id = jnp.asarray(eos_id, jnp.int32)

  def cond(carry):
    i, loop, _, _ = carry
    return (i < steps) & ~jnp.all(loop.finished_B)

  def body(carry):
    i, loop, tokens_BK, logprobs_BK = carry
    logits_BV, state = step_fn(loop.state, loop.last_B)
    token_B, logprob_B, finished_B, counts_B = _draw(
        rng, loop.step, logits_BV.astype(jnp.float32), params_sampling, loop.finished_B,
        loop.counts_B, caps_B, eos_id)
    tokens_BK = jax.lax.dynamic_update_index_in_dim(tokens_BK, token_B, i, axis=1)
    logprobs_BK = jax.lax.dynamic_update_index_in_dim(logprobs_BK, logprob_B, i, axis=1)
    loop = LoopState(state=state, last_B=token_B, step=loop.step + 1, finished_B=finished_B,
                     counts_B=counts_B, decode_steps=loop.decode_steps + 1)
    return i + 1, loop, tokens_BK, logprobs_BK

  init = (jnp.int32(0), loop, jnp.zeros((batch, steps), jnp.int32),
          jnp.zeros((batch, steps), jnp.float32))
  _, loop, tokens_BK, logprobs_BK = jax.lax.while_loop(cond, body, init)
  return loop, tokens_BK, logprobs_BK
