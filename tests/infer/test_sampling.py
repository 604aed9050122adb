"""Samplers vs a float64 numpy reference of the intended distribution (20k draws per case)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer import best_of_n as bon
from infer import sampling

N = 20_000
TV_TOL = 0.02
# Unsorted so the index bookkeeping of the sorted path is exercised.
LOGITS_V = np.array([0.3, 2.0, -1.0, 1.0, 0.0, 0.5], np.float64)
V = LOGITS_V.shape[0]
# Probabilities 0.5, 0.3, 0.15, 0.05 in permuted order: cumulative boundaries 0.5, 0.8, 0.95.
BOUNDARY_LOGITS_V = np.log(np.array([0.05, 0.5, 0.15, 0.3], np.float64))


def ref_dist(logits_V, temperature, top_k, top_p):
  """Intended distribution in float64: temperature, top-k, top-p (crossing token kept)."""
  vocab = logits_V.shape[0]
  if temperature == 0:
    return np.eye(vocab)[np.argmax(logits_V)]
  z = logits_V / temperature
  order = np.argsort(-z, kind="stable")
  probs = np.exp(z[order] - z[order].max())
  probs /= probs.sum()
  if 0 < top_k < vocab:
    probs[top_k:] = 0
    probs /= probs.sum()
  if top_p < 1:
    before = np.cumsum(probs) - probs
    keep = before < np.float32(top_p)  # exact: p as the sampler holds it (float32)
    keep[0] = True
    probs = np.where(keep, probs, 0)
    probs /= probs.sum()
  out = np.zeros(vocab)
  out[order] = probs
  return out


_draw_with_logprobs = jax.jit(sampling.sample_tokens_with_logprobs)


def _draw(rng, logits_BV, params):
  return _draw_with_logprobs(rng, logits_BV, params)[0]


def empirical(tokens, vocab):
  return np.bincount(np.asarray(tokens), minlength=vocab) / len(tokens)


def draw_dist(logits_V, method, seed=0, **kw):
  params = sampling.make_sampling_params(N, method, **kw)
  logits_BV = jnp.asarray(np.tile(logits_V, (N, 1)), jnp.float32)
  return empirical(_draw(jax.random.key(seed), logits_BV, params), logits_V.shape[0])


def assert_matches(emp, ref):
  assert np.all(emp[ref == 0] == 0), f"sampled outside support: emp={emp} ref={ref}"
  tv = 0.5 * np.abs(emp - ref).sum()
  assert tv < TV_TOL, f"total variation {tv:.4f}: emp={emp} ref={ref}"


CASES = [
    ("random", {}, (1.0, 0, 1.0)),
    ("temperature", dict(temperature=0.5), (0.5, 0, 1.0)),
    ("temperature", dict(temperature=2.0), (2.0, 0, 1.0)),
    ("top_k", dict(top_k=1), (1.0, 1, 1.0)),
    ("top_k", dict(top_k=3), (1.0, 3, 1.0)),
    ("top_k", dict(top_k=V), (1.0, V, 1.0)),
    ("top_k", dict(top_k=V + 7), (1.0, V + 7, 1.0)),
    ("top_p", dict(top_p=1.0), (1.0, 0, 1.0)),
    ("top_p", dict(top_p=0.6), (1.0, 0, 0.6)),
    ("top_p", dict(top_p=1e-6), (1.0, 0, 1e-6)),
    ("custom", dict(temperature=0.7, top_k=4, top_p=0.8), (0.7, 4, 0.8)),
    ("custom", dict(temperature=2.0, top_k=3, top_p=0.5), (2.0, 3, 0.5)),
]


@pytest.mark.parametrize("method,kw,ref_args", CASES,
                         ids=[f"{m}-{r}" for m, _, r in CASES])
def test_distribution_matches_reference(method, kw, ref_args):
  assert_matches(draw_dist(LOGITS_V, method, **kw), ref_dist(LOGITS_V, *ref_args))


@pytest.mark.parametrize("top_p,support", [
    (1e-6, {1}), (0.5 - 1e-3, {1}), (0.5 + 1e-3, {1, 3}), (0.8 - 1e-3, {1, 3}),
    (0.8 + 1e-3, {1, 3, 2}), (0.95 - 1e-3, {1, 3, 2}), (0.95 + 1e-3, {0, 1, 2, 3}),
    (1.0, {0, 1, 2, 3}),
])
def test_top_p_boundaries(top_p, support):
  """Either side of each cumulative boundary (0.5, 0.8, 0.95); p exactly on one is decided by
  float32 rounding (infer/sampling.py's docstring) and so is not asserted."""
  emp = draw_dist(BOUNDARY_LOGITS_V, "top_p", top_p=top_p)
  assert set(np.nonzero(emp)[0].tolist()) == support
  assert_matches(emp, ref_dist(BOUNDARY_LOGITS_V, 1.0, 0, top_p))


@pytest.mark.parametrize("top_p,support", [
    (0.8499994, {1, 3}), (0.8500006, {0, 1, 3}), (0.9499994, {0, 1, 3}),
    (0.9500006, {0, 1, 2, 3})])
def test_top_p_is_exact_next_to_a_boundary(top_p, support):
  """p 6e-7 below / above a cumulative boundary (0.7 + 0.15, then + 0.1) keeps exactly the
  tokens exact arithmetic keeps: a 1e-6 tolerance dropped the crossing token above it.
  A small batch is checked too (its compiled program rounds differently)."""
  logits_V = np.log(np.array([0.1, 0.7, 0.05, 0.15]))
  emp = draw_dist(logits_V, "top_p", top_p=top_p)
  assert set(np.nonzero(emp)[0].tolist()) == support
  params = sampling.make_sampling_params(8, "top_p", top_p=top_p)
  logits_BV = jnp.asarray(np.tile(logits_V, (8, 1)), jnp.float32)
  small = [_draw(jax.random.key(seed), logits_BV, params) for seed in range(60)]
  assert set(np.unique(np.concatenate(small)).tolist()) == support
  assert_matches(emp, ref_dist(logits_V, 1.0, 0, top_p))


def test_top_k_ties_keep_lowest_ids():
  logits_V = np.array([0.0, 1.0, 1.0, 1.0, -1.0, 0.5])
  emp = draw_dist(logits_V, "top_k", top_k=2)
  assert set(np.nonzero(emp)[0].tolist()) == {1, 2}
  assert_matches(emp, np.array([0, 0.5, 0.5, 0, 0, 0]))


def test_greedy_is_argmax_lowest_id_on_ties():
  logits_BV = jax.random.normal(jax.random.key(3), (N, V))
  logits_BV = logits_BV.at[0, 4].set(9.0).at[0, 3].set(9.0)
  params = sampling.make_sampling_params(N, "greedy")
  tokens = np.asarray(_draw(jax.random.key(0), logits_BV, params))
  np.testing.assert_array_equal(tokens, np.argmax(np.asarray(logits_BV), axis=-1))
  assert tokens[0] == 3


def test_rows_with_different_params_are_independent():
  rows = [(0.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.6), (1.5, V + 3, 1.0),
          (0.7, 4, 0.8)]
  temperature, top_k, top_p = (np.repeat(np.array(col), N) for col in zip(*rows))
  params = sampling.make_sampling_params(len(rows) * N, "custom", temperature=temperature,
                                         top_k=top_k, top_p=top_p)
  logits_BV = jnp.asarray(np.tile(LOGITS_V, (len(rows) * N, 1)), jnp.float32)
  tokens = np.asarray(sampling.sample_tokens(jax.random.key(1), logits_BV, params))
  for i, args in enumerate(rows):
    assert_matches(empirical(tokens[i * N:(i + 1) * N], V), ref_dist(LOGITS_V, *args))


def test_same_seed_same_output_and_seed_matters():
  params = sampling.params_from_preset(N, "chat")
  logits_BV = jnp.asarray(np.tile(LOGITS_V, (N, 1)), jnp.float32)
  a = _draw(jax.random.key(5), logits_BV, params)
  b = _draw(jax.random.key(5), logits_BV, params)
  c = _draw(jax.random.key(6), logits_BV, params)
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))


def test_no_recompile_when_params_or_seed_change():
  traces = []

  @jax.jit
  def step(rng, logits_BV, params):
    traces.append(1)
    return sampling.sample_tokens_with_logprobs(rng, logits_BV, params)

  logits_BV = jax.random.normal(jax.random.key(0), (4, 32))
  all_params = [sampling.make_sampling_params(4, m, temperature=0.3, top_k=5, top_p=0.7)
                for m in ("greedy", "random", "temperature", "top_k", "top_p", "custom")]
  all_params += [sampling.params_from_preset(4, name) for name in sampling.PRESETS]
  all_params.append(sampling.make_sampling_params(4, "custom", temperature=[0, 0.5, 1, 2],
                                                  top_k=[0, 1, 7, 40], top_p=[1, .1, .5, .9]))
  for seed, params in enumerate(all_params):
    jax.block_until_ready(step(jax.random.key(seed), logits_BV, params))
  assert len(traces) == 1


def test_logprobs_are_untempered_model_logprobs():
  logits_BV = jax.random.normal(jax.random.key(2), (N, V)) * 3
  params = sampling.make_sampling_params(N, "custom", temperature=0.5, top_k=4, top_p=0.9)
  tokens, logprobs = _draw_with_logprobs(jax.random.key(0), logits_BV, params)
  x = np.asarray(logits_BV, np.float64)
  ref = x - x.max(-1, keepdims=True)
  ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
  np.testing.assert_allclose(logprobs, ref[np.arange(N), np.asarray(tokens)], atol=1e-5)
  assert tokens.dtype == jnp.int32


def test_presets():
  chat = sampling.params_from_preset(2, "chat")
  np.testing.assert_allclose(chat.temperature, 0.7)
  np.testing.assert_allclose(chat.top_p, 0.9)
  assert np.all(np.asarray(sampling.params_from_preset(2, "code").temperature) == 0)
  creative = sampling.params_from_preset(2, "creative")
  assert np.all(np.asarray(creative.top_k) == 50)
  np.testing.assert_allclose(creative.temperature, 1.0)


def test_update_finished_and_apply_stop():
  finished = jnp.array([False, True, False, False])
  tokens = jnp.array([2, 5, 9, 3], jnp.int32)
  np.testing.assert_array_equal(sampling.update_finished(finished, tokens, 2),
                                [True, True, False, False])
  np.testing.assert_array_equal(sampling.update_finished(finished, tokens, [2, 3]),
                                [True, True, False, True])
  out, fin = sampling.apply_stop(tokens, finished, eos_id=2, pad_id=0)
  np.testing.assert_array_equal(out, [2, 0, 9, 3])
  np.testing.assert_array_equal(fin, [True, True, False, False])


@pytest.mark.parametrize("kw,match", [
    (dict(method="nucleus"), "Unknown sampling method"),
    (dict(method="temperature", temperature=-1.0), "temperature"),
    (dict(method="top_p", top_p=0.0), "top_p"),
    (dict(method="top_k"), "top_k >= 1"),
    (dict(method="custom", temperature=[1.0, 2.0, 3.0]), r"shape \[2\]"),
])
def test_bad_params_raise(kw, match):
  with pytest.raises(ValueError, match=match):
    sampling.make_sampling_params(2, **kw)


def test_batch_mismatch_raises():
  with pytest.raises(ValueError, match="make_sampling_params"):
    sampling.sample_tokens(jax.random.key(0), jnp.zeros((3, 5)),
                           sampling.make_sampling_params(2, "random"))


def test_best_of_n_picks_max_score():
  def sample_fn(key):
    mix = jax.random.key_data(key).sum() * (jnp.arange(15, dtype=jnp.uint32) + 1)
    return dict(tokens=((mix >> 7) % 10).astype(jnp.int32).reshape(3, 5), tag=jnp.arange(3))

  def score_fn(sample):
    return -jnp.sum(sample["tokens"], axis=-1).astype(jnp.float32)

  out = jax.jit(lambda rng: bon.best_of_n(sample_fn, score_fn, 4, rng))(jax.random.key(0))
  scores = np.asarray(out.scores)
  assert scores.shape == (3, 4)
  samples = np.asarray(out.samples["tokens"])
  np.testing.assert_allclose(scores, -samples.sum(-1))
  best = np.argmax(scores, axis=1)
  np.testing.assert_array_equal(out.best_index, best)
  np.testing.assert_array_equal(out.best["tokens"], samples[np.arange(3), best])
  np.testing.assert_array_equal(out.best["tag"], np.arange(3))


def test_mean_logprob_score():
  logprobs = jnp.array([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
  mask = jnp.array([[1, 1, 0], [1, 1, 1]])
  np.testing.assert_allclose(bon.mean_logprob_score(logprobs, mask), [-1.5, -0.5])


def test_inverse_cdf_categorical_matches_softmax_and_skips_masked_tokens():
  logits_V = np.array([0.5, -np.inf, 1.5, 0.0, -np.inf, 1.0, -np.inf])
  logits_BV = jnp.asarray(np.tile(logits_V, (N, 1)), jnp.float32)
  tokens = np.asarray(jax.jit(sampling.categorical)(jax.random.key(4), logits_BV))
  emp = empirical(tokens, logits_V.shape[0])
  finite = np.isfinite(logits_V)
  ref = np.where(finite, np.exp(np.where(finite, logits_V, 0) - 1.5), 0)
  assert_matches(emp, ref / ref.sum())
  assert emp[~finite].sum() == 0  # the trailing -inf tokens too (u close to 1)
