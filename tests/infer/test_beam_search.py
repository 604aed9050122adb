"""Beam search on a toy second-order Markov "model" vs greedy decoding and brute force."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.beam_search import beam_search


def make_model(vocab, seed, eos_boost=0.0, eos_id=0):
  """logits depend on (previous token, current token): the state must be reordered right."""
  rng = np.random.default_rng(seed)
  table_VVV = rng.normal(size=(vocab, vocab, vocab)) * 2.0
  table_VVV[..., eos_id] += eos_boost
  return table_VVV.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _compiled(num_beams, max_new_tokens, eos_id, batch_axis):
  """One jitted search per static config; table, length penalty and early stop are traced."""

  def search(table, init, first_logits_BV, length_penalty, early_stopping):
    def step_fn(state, tokens_T):
      prev_T = state["prev"][0] if batch_axis else state["prev"]
      logits = table[prev_T, tokens_T]
      new_prev = tokens_T[None] if batch_axis else tokens_T
      return logits, dict(prev=new_prev, pos=state["pos"] + 1)

    return beam_search(step_fn, init, first_logits_BV, num_beams, max_new_tokens, eos_id,
                       length_penalty=length_penalty, early_stopping=early_stopping,
                       batch_axis=batch_axis)

  return jax.jit(search)


def run(table_VVV, first_logits_BV, prompt_last_B, num_beams, max_new_tokens, eos_id,
        length_penalty, early_stopping=True, batch_axis=0):
  prev_B = jnp.asarray(prompt_last_B, jnp.int32)
  init = dict(prev=prev_B[None] if batch_axis else prev_B, pos=jnp.int32(0))
  fn = _compiled(num_beams, max_new_tokens, eos_id, batch_axis)
  return fn(jnp.asarray(table_VVV), init, jnp.asarray(first_logits_BV, jnp.float32),
            jnp.float32(length_penalty), jnp.bool_(early_stopping))


def log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def brute_force(table_VVV, first_logits_V, prompt_last, max_new_tokens, eos_id, length_penalty):
  """Every complete sequence (ends in eos, or reaches max length), sorted by score."""
  vocab = first_logits_V.shape[0]
  logp_table = log_softmax(table_VVV)
  first = log_softmax(first_logits_V)
  results = []
  for length in range(1, max_new_tokens + 1):
    for seq in itertools.product(range(vocab), repeat=length):
      if eos_id in seq[:-1] or (length < max_new_tokens and seq[-1] != eos_id):
        continue
      total, prev = first[seq[0]], prompt_last
      for a, b in zip(seq[:-1], seq[1:]):
        total += logp_table[prev, a, b]
        prev = a
      results.append((total / length ** length_penalty, seq))
  results.sort(key=lambda r: -r[0])
  return results


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, -0.5])
def test_exhaustive_beams_match_brute_force(length_penalty):
  vocab, steps, beams, eos = 4, 4, 32, 0
  table = make_model(vocab, seed=1)
  first_BV = np.random.default_rng(2).normal(size=(2, vocab)) * 2
  prompt_last = [1, 3]
  out = run(table, first_BV, prompt_last, beams, steps, eos, length_penalty)
  for b in range(2):
    ref = brute_force(table, first_BV[b], prompt_last[b], steps, eos, length_penalty)[:beams]
    np.testing.assert_allclose(out.scores[b], [r[0] for r in ref], atol=1e-4)
    for w, (_, seq) in enumerate(ref):
      assert int(out.lengths[b, w]) == len(seq)
      assert tuple(np.asarray(out.sequences[b, w, :len(seq)]).tolist()) == seq
      assert np.all(np.asarray(out.sequences[b, w, len(seq):]) == 0)


def test_small_beam_finds_brute_force_best():
  vocab, steps, eos = 5, 3, 4
  table = make_model(vocab, seed=7)
  first_BV = np.random.default_rng(8).normal(size=(3, vocab))
  prompt_last = [0, 2, 4]
  out = run(table, first_BV, prompt_last, 6, steps, eos, 0.0)
  for b in range(3):
    best_score, best_seq = brute_force(table, first_BV[b], prompt_last[b], steps, eos, 0.0)[0]
    np.testing.assert_allclose(out.scores[b, 0], best_score, atol=1e-4)
    assert tuple(np.asarray(out.sequences[b, 0, :len(best_seq)]).tolist()) == best_seq
  assert np.all(np.diff(np.asarray(out.scores), axis=1) <= 0), "not sorted best first"


def greedy(table_VVV, first_logits_V, prompt_last, steps):
  seq, prev, logits = [], prompt_last, first_logits_V
  for _ in range(steps):
    tok = int(np.argmax(logits))
    seq.append(tok)
    logits, prev = table_VVV[prev, tok], tok
  return seq


def test_one_beam_is_greedy():
  vocab, steps = 16, 8
  table = make_model(vocab, seed=3)
  first_BV = np.random.default_rng(4).normal(size=(3, vocab))
  prompt_last = [0, 5, 9]
  out = run(table, first_BV, prompt_last, 1, steps, None, 0.0)
  assert int(out.num_steps) == steps
  for b in range(3):
    assert np.asarray(out.sequences[b, 0]).tolist() == greedy(table, first_BV[b],
                                                               prompt_last[b], steps)


def test_one_beam_with_eos_never_worse_than_greedy():
  vocab, steps, eos = 6, 6, 2
  table = make_model(vocab, seed=5, eos_boost=1.0, eos_id=eos)
  first_BV = np.random.default_rng(6).normal(size=(4, vocab))
  out = run(table, first_BV, [0, 1, 3, 5], 1, steps, eos, 0.0)
  logp_table = log_softmax(table)
  for b, last in enumerate([0, 1, 3, 5]):
    seq = greedy(table, first_BV[b], last, steps)
    if eos in seq:
      seq = seq[:seq.index(eos) + 1]
    total = log_softmax(first_BV[b])[seq[0]]
    prev = last
    for x, y in zip(seq[:-1], seq[1:]):
      total, prev = total + logp_table[prev, x, y], x
    assert float(out.scores[b, 0]) >= total - 1e-5


@pytest.mark.parametrize("length_penalty", [0.0, 0.6])
def test_early_stopping_triggers_and_keeps_result(length_penalty):
  vocab, steps, beams, eos = 6, 10, 2, 0
  table = make_model(vocab, seed=9, eos_boost=4.0, eos_id=eos)
  first_BV = np.random.default_rng(10).normal(size=(2, vocab))
  early = run(table, first_BV, [1, 2], beams, steps, eos, length_penalty)
  full = run(table, first_BV, [1, 2], beams, steps, eos, length_penalty, early_stopping=False)
  assert int(early.num_steps) < steps
  assert int(full.num_steps) == steps
  np.testing.assert_array_equal(early.sequences, full.sequences)
  np.testing.assert_allclose(early.scores, full.scores)
  np.testing.assert_array_equal(early.lengths, full.lengths)


def test_length_penalty_bound_keeps_searching():
  """A live beam worse than the finished one in raw log-prob still wins once normalised.

  Step 0: eos (p=0.75) beats token 1 (p=0.25); after token 1 the model repeats 1 almost
  surely, so with length_penalty 1 the length-6 sequence scores ~log(0.25)/6 > log(0.75).
  A bound that ignores the length penalty, or divides by the next length instead of the
  maximum one, or keeping only W candidates, would stop with the eos hypothesis.
  """
  vocab, steps, eos = 3, 6, 0
  table = np.zeros((vocab, vocab, vocab), np.float32)
  table[:, 1] = [-30.0, 30.0, -30.0]
  first_BV = np.log(np.array([[0.75, 0.25, 1e-9]]))
  for early_stopping in (True, False):
    out = run(table, first_BV, [2], 1, steps, eos, 1.0, early_stopping=early_stopping)
    assert np.asarray(out.sequences[0, 0]).tolist() == [1] * steps
    np.testing.assert_allclose(out.scores[0, 0], np.log(0.25) / steps, rtol=1e-4)
    assert int(out.num_steps) == steps


def test_state_batch_axis_and_scalar_leaves():
  """Leaves batched on axis 1 (a layer-stacked cache) reorder like axis 0 ones."""
  vocab, steps, beams, eos = 5, 4, 3, 1
  table = make_model(vocab, seed=11)
  first_BV = np.random.default_rng(12).normal(size=(2, vocab))
  a = run(table, first_BV, [0, 3], beams, steps, eos, 1.0, batch_axis=0)
  b = run(table, first_BV, [0, 3], beams, steps, eos, 1.0, batch_axis=1)
  np.testing.assert_array_equal(a.sequences, b.sequences)
  np.testing.assert_allclose(a.scores, b.scores)


def test_bad_state_batch_raises():
  with pytest.raises(ValueError, match="batch_axis"):
    beam_search(lambda s, t: (None, s), jnp.zeros((3, 2)), jnp.zeros((2, 5)), 2, 3, 0)
