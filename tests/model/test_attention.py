"""Attention against naive float64 numpy references: causal masking, GQA/MQA, rope, cache mask."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import attention, layers
from model.config import ModelConfig


_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def np_attention(q, k, v, mask):
  """Naive float64 attention: q [B,L,N,H], k/v [B,S,K,H], mask [B,L,S] bool."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, l, n, h = q.shape
  group = n // k.shape[2]
  out = np.zeros((b, l, n, h))
  for bi in range(b):
    for ni in range(n):
      ki = ni // group
      logits = q[bi, :, ni] @ k[bi, :, ki].T / np.sqrt(h)
      logits = np.where(mask[bi], logits, -np.inf)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      out[bi, :, ni] = p @ v[bi, :, ki]
  return out


def _qkv(b, l, s, n, k, h, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, l, n, h)).astype(np.float32),
          rng.normal(size=(b, s, k, h)).astype(np.float32),
          rng.normal(size=(b, s, k, h)).astype(np.float32))


@pytest.mark.parametrize("n,k", [(4, 4), (4, 2), (4, 1)])
def test_causal_attention_matches_numpy(n, k):
  q, kk, v = _qkv(2, 7, 7, n, k, 8)
  mask = np.broadcast_to(np.tril(np.ones((7, 7), bool)), (2, 7, 7))
  want = np_attention(q, kk, v, mask)
  got = _jit(attention.causal_attention, static_argnums=3)(q, kk, v, "xla")
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  ref = _jit(attention.reference_attention)(q, kk, v)
  np.testing.assert_allclose(ref, want, atol=1e-5, rtol=1e-5)


def test_cached_attention_matches_numpy_with_row_offsets():
  b, l, s, n, k, h = 3, 2, 8, 4, 2, 8
  q, kk, v = _qkv(b, l, s, n, k, h, seed=1)
  lengths = jnp.array([0, 3, 6], jnp.int32)
  mask = np.asarray(attention.cache_mask(lengths, l, s))[:, 0]
  want_mask = np.zeros((b, l, s), bool)
  for bi, ln in enumerate([0, 3, 6]):
    for i in range(l):
      want_mask[bi, i, :ln + i + 1] = True
  np.testing.assert_array_equal(mask, want_mask)
  want = np_attention(q, kk, v, want_mask)
  got = _jit(attention.masked_attention)(q, kk, v, mask[:, None])
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  ref = _jit(attention.reference_attention)(q, kk, v, mask)
  np.testing.assert_allclose(ref, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n,k", [(4, 2), (4, 1), (2, 2)])
def test_head_major_cached_attention_matches_numpy(n, k):
  """cached_attention reads [B, K, S, H] cache slices; same result as the numpy reference."""
  b, l, s, h = 3, 2, 8, 8
  q, kk, v = _qkv(b, l, s, n, k, h, seed=2)
  lengths = jnp.array([0, 3, 6], jnp.int32)
  mask_B1LS = attention.cache_mask(lengths, l, s)
  want = np_attention(q, kk, v, np.asarray(mask_B1LS)[:, 0])
  head_major = lambda a: jnp.transpose(a, (0, 2, 1, 3))
  got = _jit(attention.cached_attention)(q, head_major(kk), head_major(v), mask_B1LS)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _np_rope(x, pos, theta):
  x = np.asarray(x, np.float64)
  h = x.shape[-1]
  freqs = theta ** (-np.arange(0, h, 2) / h)
  ang = np.asarray(pos, np.float64)[..., None, None] * freqs
  z = (x[..., :h // 2] + 1j * x[..., h // 2:]) * np.exp(1j * ang)
  return np.concatenate([z.real, z.imag], -1)


def test_rope_matches_complex_rotation_and_is_relative():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
  pos = np.array([[0, 1, 2, 3, 4], [7, 9, 11, 100, 1000]])
  got = _jit(layers.apply_rope, static_argnums=2)(x, pos, 10_000.0)
  np.testing.assert_allclose(got, _np_rope(x, pos, 10_000.0), atol=1e-4, rtol=1e-4)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
  kv = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
  dot = lambda m, n: float(jnp.sum(layers.apply_rope(q, jnp.array([[m]]), 1e4)
                                   * layers.apply_rope(kv, jnp.array([[n]]), 1e4)))
  assert abs(dot(5, 2) - dot(13, 10)) < 1e-4
  assert abs(dot(5, 2) - dot(5, 3)) > 1e-3


def test_attention_module_matches_numpy():
  """Full module (projections + GQA + causal) vs float64 numpy, no rope."""
  c = ModelConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                  pos_encoding="sinusoidal")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 32))
  pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
  module = attention.Attention(c)
  abstract = nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(1), x, pos))
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.normal(size=a.shape), jnp.float32),
                        abstract["params"])
  p = {k: np.asarray(v["kernel"], np.float64) for k, v in params.items()}
  assert set(params) == {"query", "key", "value", "out"}
  assert p["query"].shape == (32, 4, 8) and p["key"].shape == (32, 2, 8)
  got, new_cache = _jit(module.apply)({"params": params}, x, pos)
  assert new_cache is None
  xn = np.asarray(x, np.float64)
  q = np.einsum("bld,dnh->blnh", xn, p["query"])
  k = np.einsum("bld,dkh->blkh", xn, p["key"])
  v = np.einsum("bld,dkh->blkh", xn, p["value"])
  mask = np.broadcast_to(np.tril(np.ones((6, 6), bool)), (2, 6, 6))
  want = np.einsum("blnh,nhd->bld", np_attention(q, k, v, mask), p["out"])
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_cache_helpers_shapes_and_axes():
  c = ModelConfig(d_model=32, n_layers=3, n_heads=4, n_kv_heads=2)
  cache = attention.init_cache(c, batch=2, capacity=10)
  assert cache["k"].shape == cache["v"].shape == (3, 2, 2, 10, 8)  # [layers, B, K, S, H]
  assert cache["lengths"].shape == (2,) and cache["lengths"].dtype == jnp.int32
  axes = attention.cache_logical_axes(c)
  assert set(axes) == set(cache)
  for name in cache:
    assert len(axes[name]) == cache[name].ndim
  assert attention.init_cache(c, 1, 4, jnp.bfloat16)["k"].dtype == jnp.bfloat16


def test_attention_impl_choice():
  assert attention.attention_impl(ModelConfig(attention_impl="cudnn")) == "cudnn"
  assert attention.attention_impl(ModelConfig(attention_impl="xla")) == "xla"
  want = "cudnn" if jax.default_backend() == "gpu" else "xla"
  assert attention.attention_impl(ModelConfig(dtype="bfloat16")) == want
  assert attention.attention_impl(ModelConfig(dtype="float32")) == "xla"


# ---- masks as data ----

SEGMENTS = np.array([[1, 1, 1, 2, 2, 2, 2, 0],
                     [1, 1, 1, 1, 1, 3, 3, 3]], np.int32)
PREFIX = np.array([3, 0], np.int32)


def _np_mask(kind, segments=None, prefix=None, b=2, l=8):
  """The documented mask rules, one (query, key) pair at a time."""
  out = np.zeros((b, l, l), bool)
  for bi in range(b):
    for i in range(l):
      for j in range(l):
        ok = {"causal": j <= i, "bidirectional": True,
              "prefix": j <= i or (prefix is not None and j < prefix[bi])}[kind]
        if segments is not None:
          ok = (ok and segments[bi, i] == segments[bi, j] and segments[bi, j] > 0) or i == j
        out[bi, i, j] = ok
  return out


MASKS = {
    "packed": (lambda: attention.Mask.packed(SEGMENTS), ("causal", SEGMENTS, None)),
    "bidirectional": (lambda: attention.Mask.bidirectional(), ("bidirectional", None, None)),
    "bidirectional_packed": (lambda: attention.Mask.bidirectional(SEGMENTS),
                             ("bidirectional", SEGMENTS, None)),
    "prefix": (lambda: attention.Mask.prefix(PREFIX), ("prefix", None, PREFIX)),
    "prefix_packed": (lambda: attention.Mask.prefix(PREFIX, SEGMENTS),
                      ("prefix", SEGMENTS, PREFIX)),
}


@pytest.mark.parametrize("name", list(MASKS))
def test_mask_rules_and_masked_attention_match_numpy(name):
  make, (kind, segments, prefix) = MASKS[name]
  mask = make()
  want_mask = _np_mask(kind, segments, prefix)
  got_mask = np.broadcast_to(np.asarray(mask.mask_BLS(8)), want_mask.shape)
  np.testing.assert_array_equal(got_mask, want_mask)
  assert not mask.is_plain_causal
  q, kk, v = _qkv(2, 8, 8, 4, 2, 8, seed=5)
  want = np_attention(q, kk, v, want_mask)
  got = _jit(lambda q, k, v, m: attention.masked_attention(q, k, v, m.mask_BLS(8)[:, None]))(
      q, kk, v, mask)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  ref = _jit(attention.reference_attention)(q, kk, v, jnp.asarray(want_mask))
  np.testing.assert_allclose(ref, want, atol=1e-5, rtol=1e-5)


def test_packed_attention_equals_each_segment_alone():
  q, kk, v = _qkv(2, 8, 8, 4, 2, 8, seed=6)
  mask_BLS = attention.Mask.packed(SEGMENTS).mask_BLS(8)
  packed = np.asarray(_jit(attention.masked_attention)(q, kk, v, mask_BLS[:, None]))
  for b in range(2):
    for seg in set(SEGMENTS[b].tolist()) - {0}:
      idx = np.flatnonzero(SEGMENTS[b] == seg)
      alone = attention.causal_attention(q[b:b + 1, idx], kk[b:b + 1, idx], v[b:b + 1, idx])
      np.testing.assert_allclose(packed[b, idx], np.asarray(alone)[0], atol=1e-5, rtol=1e-5)
  # The padding token sees only itself: its output is its own value row, not NaN.
  np.testing.assert_allclose(packed[0, 7], np.repeat(v[0, 7], 2, axis=0), atol=1e-6)


def test_mask_positions_restart_per_segment_and_bad_masks():
  pos = attention.Mask.packed(SEGMENTS).positions_BL(2, 8)
  np.testing.assert_array_equal(pos, [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 0, 1, 2]])
  np.testing.assert_array_equal(attention.Mask.causal().positions_BL(1, 3), [[0, 1, 2]])
  assert attention.Mask.causal().is_plain_causal
  with pytest.raises(ValueError, match="Mask.prefix"):
    attention.Mask("prefix")
  with pytest.raises(ValueError, match="not one of"):
    attention.Mask("sliding")


@pytest.mark.parametrize("name", ["bidirectional", "prefix_packed"])
def test_attention_module_with_mask_matches_numpy(name):
  make, (kind, segments, prefix) = MASKS[name]
  c = ModelConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                  pos_encoding="sinusoidal")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 32))
  pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
  module = attention.Attention(c)
  abstract = nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(1), x, pos))
  rng = np.random.default_rng(4)
  params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.normal(size=a.shape), jnp.float32),
                        abstract["params"])
  p = {k: np.asarray(v["kernel"], np.float64) for k, v in params.items()}
  got, _ = _jit(lambda prm, x, m: module.apply(prm, x, pos, mask=m))({"params": params}, x,
                                                                       make())
  xn = np.asarray(x, np.float64)
  q = np.einsum("bld,dnh->blnh", xn, p["query"])
  k = np.einsum("bld,dkh->blkh", xn, p["key"])
  v = np.einsum("bld,dkh->blkh", xn, p["value"])
  want = np.einsum("blnh,nhd->bld", np_attention(q, k, v, _np_mask(kind, segments, prefix)),
                   p["out"])
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
