"""MoE layer vs float64 numpy references, capacity drops, aux losses and expert parallelism."""

import functools
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from model import moe_dispatch  # noqa: E402
from model import moe_router  # noqa: E402
from model import sharding  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.moe import MoeMlp  # noqa: E402

D, F = 32, 64
# (capacity_factor, dropless_impl): the three dispatch paths, none of which drops here.
PATHS = {
    "ragged": (0.0, "ragged"),
    "padded": (0.0, "padded"),
    "capacity": (100.0, "auto"),
}


def _config(path="ragged", **overrides):
  cf, _ = PATHS[path]
  kw = dict(d_model=D, n_layers=1, n_heads=4, n_experts=4, experts_per_token=2,
            d_ff_expert=F, capacity_factor=cf)
  kw.update(overrides)
  return ModelConfig(**kw)


def _layer(config, path="ragged"):
  return MoeMlp(config, dropless_impl=PATHS[path][1])


def _params(config, seed=0, equal_experts=False):
  """Random float32 params of a healthy scale (init_std would make outputs tiny)."""
  rng = np.random.default_rng(seed)
  e, f = config.n_experts, config.expert_ffw_dim
  n = 1 if equal_experts else e
  keys = ("wi_gate", "wi_up") if config.activation == "swiglu" else ("wi",)
  p = {key: rng.normal(0, D ** -0.5, (n, D, f)) for key in keys}
  p["wo"] = rng.normal(0, f ** -0.5, (n, f, D))
  p = {key: np.broadcast_to(w, (e,) + w.shape[1:]) for key, w in p.items()}
  p["router_kernel"] = rng.normal(0, 1.0, (D, e))
  if config.n_shared_experts:
    fs = config.n_shared_experts * f
    for key in keys:
      p["shared_" + key] = rng.normal(0, D ** -0.5, (D, fs))
    p["shared_wo"] = rng.normal(0, fs ** -0.5, (fs, D))
  return {key: jnp.asarray(w, jnp.float32) for key, w in p.items()}


def _nest(p):
  """Flat test params -> MoeMlp's tree: every weight but the router is a Projection kernel."""
  return {key: w if key == "router_kernel" else {"kernel": w} for key, w in p.items()}


def _flat(tree):
  return {key: w if key == "router_kernel" else w["kernel"] for key, w in tree.items()}


def _x(b=4, l=8, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, l, D)), jnp.float32)


# ---- float64 numpy references ----

def _np_ffn(x, wi, wo, activation, wi_up=None):
  h = x @ wi
  if activation == "swiglu":
    h = h / (1 + np.exp(-h)) * (x @ wi_up)
  elif activation == "gelu":
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
  else:
    h = np.maximum(h, 0)
  return h @ wo


def _np_expert(params, e, x, activation):
  p = {key: np.asarray(w, np.float64) for key, w in params.items()}
  if activation == "swiglu":
    return _np_ffn(x, p["wi_gate"][e], p["wo"][e], activation, p["wi_up"][e])
  return _np_ffn(x, p["wi"][e], p["wo"][e], activation)


def _np_softmax(z):
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def _np_route(x_TD, params, k, weighting):
  logits = x_TD @ np.asarray(params["router_kernel"], np.float64)
  probs = _np_softmax(logits)
  idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  top_probs = np.take_along_axis(probs, idx, -1)
  if k == 1:
    w = top_probs
  elif weighting == "softmax_topk":
    w = _np_softmax(np.take_along_axis(logits, idx, -1))
  else:
    w = top_probs / top_probs.sum(-1, keepdims=True)
  return logits, probs, idx, w


def _np_capacity_keep(idx_TK, n_experts, cap):
  """The documented priority rule: all first choices, then second choices, token order."""
  keep = np.zeros(idx_TK.shape, bool)
  used = np.zeros(n_experts, int)
  for j in range(idx_TK.shape[1]):
    for t in range(idx_TK.shape[0]):
      e = idx_TK[t, j]
      keep[t, j] = used[e] < cap
      used[e] += 1
  return keep


def _np_moe(x_BLD, params, config, keep_TK=None):
  x = np.asarray(x_BLD, np.float64).reshape(-1, D)
  _, _, idx, w = _np_route(x, params, config.experts_per_token, config.router_weighting)
  if keep_TK is not None:
    w = w * keep_TK
  y = np.zeros_like(x)
  for e in range(config.n_experts):
    out = _np_expert(params, e, x, config.activation)
    y += np.sum(w * (idx == e), axis=-1, keepdims=True) * out
  return y.reshape(x_BLD.shape)


def _apply(config, path, params, x):
  return jax.jit(_layer(config, path).apply)({"params": _nest(params)}, x)


# ---- numerical checks ----

@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("k", [1, 3])
def test_equal_experts_is_dense_ffn(path, k):
  config = _config(path, experts_per_token=k)
  params = _params(config, equal_experts=True)
  x = _x()
  y, aux = _apply(config, path, params, x)
  x64 = np.asarray(x, np.float64).reshape(-1, D)
  dense = _np_expert(params, 0, x64, "swiglu")
  # k >= 2: the weights sum to 1. k == 1: Switch weighting, scaled by the top-1 probability.
  scale = _np_route(x64, params, k, config.router_weighting)[3].sum(-1, keepdims=True)
  if k > 1:
    np.testing.assert_allclose(scale, 1.0, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, D), scale * dense, rtol=2e-4, atol=2e-5)
  assert float(aux["drop_fraction"]) == 0.0


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_equal_experts_other_activations(activation):
  config = _config("capacity", activation=activation, n_shared_experts=2)
  params = _params(config, equal_experts=True)
  x = _x()
  y, _ = _apply(config, "capacity", params, x)
  x64 = np.asarray(x, np.float64).reshape(-1, D)
  p64 = {key: np.asarray(w, np.float64) for key, w in params.items()}
  want = (_np_ffn(x64, p64["wi"][0], p64["wo"][0], activation)
          + _np_ffn(x64, p64["shared_wi"], p64["shared_wo"], activation))
  np.testing.assert_allclose(np.asarray(y).reshape(-1, D), want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("weighting,path", [("softmax_topk", "ragged"), ("topk_probs", "capacity")])
def test_top_k_equals_all_experts_is_weighted_sum(weighting, path):
  config = _config(path, experts_per_token=4, router_weighting=weighting)
  params = _params(config, seed=3)
  x = _x(seed=4)
  y, _ = _apply(config, path, params, x)
  x64 = np.asarray(x, np.float64).reshape(-1, D)
  probs = _np_softmax(x64 @ np.asarray(params["router_kernel"], np.float64))
  want = sum(probs[:, e:e + 1] * _np_expert(params, e, x64, "swiglu") for e in range(4))
  np.testing.assert_allclose(np.asarray(y).reshape(-1, D), want, rtol=2e-4, atol=2e-5)


def test_random_experts_match_reference_with_shared():
  config = _config("ragged", n_experts=8, n_shared_experts=1)
  params = _params(config, seed=5)
  x = _x(seed=6)
  y, _ = _apply(config, "ragged", params, x)
  x64 = np.asarray(x, np.float64).reshape(-1, D)
  p64 = {key: np.asarray(w, np.float64) for key, w in params.items()}
  shared = _np_ffn(x64, p64["shared_wi_gate"], p64["shared_wo"], "swiglu", p64["shared_wi_up"])
  want = _np_moe(x, params, config).reshape(-1, D) + shared
  np.testing.assert_allclose(np.asarray(y).reshape(-1, D), want, rtol=2e-4, atol=2e-5)


def test_capacity_rule_drops_predicted_assignments():
  # E=4, T=4, k=2, capacity_factor=1 -> C = ceil(4 * 2 / 4) = 2.
  # First choices: t0->0, t1->1, t2->0, t3->0 (third in expert 0's queue: dropped).
  # Second choices: t0->1, t1->0 (expert 0 full: dropped), t2->2, t3->3.
  expert_TK = jnp.array([[0, 1], [1, 0], [0, 2], [0, 3]], jnp.int32)
  want_keep = np.array([[1, 1], [1, 0], [1, 1], [0, 1]], bool)
  cap = moe_dispatch.capacity(4, 2, 4, 1.0)
  assert cap == 2
  slot_TK, keep_TK = jax.jit(moe_dispatch.assign_slots, static_argnums=(1, 2))(
      expert_TK, 4, cap)
  np.testing.assert_array_equal(np.asarray(keep_TK), want_keep)
  np.testing.assert_array_equal(np.asarray(slot_TK),
                                [[0, 3], [2, 8], [1, 4], [8, 6]])

  rng = np.random.default_rng(0)
  x_TD = jnp.asarray(rng.normal(size=(4, D)), jnp.float32)
  weight_TK = jnp.asarray(rng.uniform(0.2, 1.0, size=(4, 2)), jnp.float32)
  scale_E = jnp.array([1.0, 2.0, 3.0, 4.0])
  y_TD, n_dropped = jax.jit(lambda x, e, w: moe_dispatch.capacity_moe(
      x, e, w, 4, cap, lambda x_ECD: x_ECD * scale_E[:, None, None]))(
          x_TD, expert_TK, weight_TK)
  want = np.sum(np.asarray(weight_TK) * want_keep * (np.asarray(expert_TK) + 1), -1)
  np.testing.assert_allclose(np.asarray(y_TD), want[:, None] * np.asarray(x_TD), rtol=1e-6)
  assert int(n_dropped) == 2


def test_capacity_layer_matches_reference_with_drops():
  config = _config("capacity", n_experts=4, experts_per_token=2, capacity_factor=0.75)
  params = _params(config, seed=7)
  # Skew the router so that some experts overflow.
  params["router_kernel"] = params["router_kernel"].at[:, 0].add(0.5)
  x = _x(b=2, l=16, seed=8)
  y, aux = _apply(config, "capacity", params, x)
  x64 = np.asarray(x, np.float64).reshape(-1, D)
  idx = _np_route(x64, params, 2, config.router_weighting)[2]
  keep = _np_capacity_keep(idx, 4, moe_dispatch.capacity(32, 2, 4, 0.75))
  assert 0 < (~keep).sum()
  np.testing.assert_allclose(float(aux["drop_fraction"]), (~keep).mean(), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(y), _np_moe(x, params, config, keep), rtol=2e-4,
                             atol=2e-5)


def _loss_fn(config, path):
  layer = _layer(config, path)

  def loss(params, x):
    y, aux = layer.apply({"params": _nest(params)}, x)
    r = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
    return jnp.sum(y * r) + aux["load_balance_loss"] + aux["router_z_loss"], (y, aux)
  return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


def _assert_trees_close(a, b, rtol=1e-4, atol=1e-5):
  for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@functools.cache
def _unsharded_reference():
  """Dropless and no-drop capacity layers agree, so one unsharded run serves every case."""
  config = _config("ragged", n_experts=8, n_shared_experts=1)
  params = _params(config, seed=17)
  x = _x(b=8, l=4, seed=18)
  return params, x, jax.jit(_loss_fn(config, "ragged"))(params, x)


def test_dropless_equals_capacity_with_huge_factor_fwd_and_grad():
  params, x, want = _unsharded_reference()  # dropless (ragged_dot) path
  config = _config("capacity", n_experts=8, n_shared_experts=1)
  _assert_trees_close(jax.jit(_loss_fn(config, "capacity"))(params, x), want)


@pytest.mark.parametrize("k", [1, 2])
def test_router_gets_gradient_from_task_loss(k):
  config = _config("ragged", experts_per_token=k)
  layer = _layer(config)
  params = _params(config, seed=11)

  def task_loss(params):
    y, _ = layer.apply({"params": _nest(params)}, _x(seed=12))
    return jnp.sum(jnp.sin(y))
  g = jax.jit(jax.grad(task_loss))(params)["router_kernel"]
  assert float(jnp.max(jnp.abs(g))) > 1e-3


def test_aux_losses():
  config = _config("ragged", experts_per_token=1)
  layer = jax.jit(_layer(config).apply)
  params = _params(config, seed=13)
  x = _x(seed=14)
  # Uniform router probabilities -> load balance loss exactly 1.
  uniform = dict(params, router_kernel=jnp.zeros((D, 4)))
  _, aux = layer({"params": _nest(uniform)}, x)
  assert float(aux["load_balance_loss"]) == pytest.approx(1.0, abs=1e-6)
  np.testing.assert_allclose(float(aux["router_z_loss"]), np.log(4) ** 2, rtol=1e-6)
  # Every token to expert 0 with probability ~1 -> E; per-expert loads [T,0,0,0] -> cv sqrt(3).
  collapsed = dict(params, router_kernel=jnp.zeros((D, 4)).at[:, 0].set(10.0))
  _, aux = layer({"params": _nest(collapsed)}, jnp.abs(x) + 0.1)
  assert float(aux["load_balance_loss"]) == pytest.approx(4.0, rel=1e-6)
  assert float(aux["expert_load_cv"]) == pytest.approx(np.sqrt(3), rel=1e-6)
  # Random routing: every aux value against its numpy formula.
  _, aux = layer({"params": _nest(params)}, x)
  x64 = np.asarray(x, np.float64).reshape(-1, D)
  logits, probs, idx, _ = _np_route(x64, params, 1, "softmax_topk")
  lse = np.log(np.exp(logits).sum(-1))
  f = np.bincount(idx.ravel(), minlength=4) / idx.size
  np.testing.assert_allclose(float(aux["router_z_loss"]), np.mean(lse ** 2), rtol=1e-5)
  np.testing.assert_allclose(float(aux["load_balance_loss"]), 4 * np.sum(f * probs.mean(0)),
                             rtol=1e-5)
  np.testing.assert_allclose(float(aux["expert_load_cv"]), f.std() / f.mean(), rtol=1e-5)
  assert all(v.dtype == jnp.float32 and v.shape == () for v in aux.values())


def test_router_weightings():
  logits_TE = jnp.array([[2.0, 1.0, 0.0, -1.0]])
  r = moe_router.route(logits_TE, 2, "softmax_topk")
  np.testing.assert_array_equal(np.asarray(r.expert_TK), [[0, 1]])
  np.testing.assert_allclose(np.asarray(r.weight_TK), _np_softmax(np.array([[2.0, 1.0]])),
                             rtol=1e-6)
  p = _np_softmax(np.asarray(logits_TE, np.float64))
  # The renormalised selected probabilities are the same function as softmax_topk.
  np.testing.assert_allclose(np.asarray(r.weight_TK), p[:, :2] / p[:, :2].sum(), rtol=1e-6)
  r = moe_router.route(logits_TE, 2, "topk_probs")
  np.testing.assert_allclose(np.asarray(r.weight_TK), p[:, :2], rtol=1e-6)
  assert float(np.asarray(r.weight_TK).sum()) < 0.99
  r = moe_router.route(logits_TE, 1, "softmax_topk")
  np.testing.assert_allclose(np.asarray(r.weight_TK), p[:, :1], rtol=1e-6)
  with pytest.raises(ValueError, match="router weighting"):
    moe_router.route(logits_TE, 2, "bogus")


def test_bfloat16_compute_close_to_float32():
  config = _config("capacity")
  params = _params(config, seed=15)
  x = _x(seed=16)
  y32, _ = _apply(config, "capacity", params, x)
  y16, aux = _apply(_config("capacity", dtype="bfloat16"), "capacity", params, x)
  assert y16.dtype == jnp.bfloat16
  assert aux["load_balance_loss"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), atol=0.1)


# ---- expert parallelism on 8 simulated devices ----

MESHES = {"expert4_data2": {"expert": 4, "data": 2},
          "expert2_fsdp2_tensor2": {"expert": 2, "fsdp": 2, "tensor": 2},
          "expert8": {"expert": 8},
          "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2}}


def _sharded_run(config, path, params, x, mesh_shape, set_mesh=False):
  mesh = sharding.make_mesh(mesh_shape)
  boxed = jax.eval_shape(_layer(config, path).init, jax.random.key(0), x)["params"]
  shardings = _flat(sharding.tree_shardings(boxed, mesh))
  params = jax.device_put(params, shardings)
  x = jax.device_put(x, sharding.batch_sharding(mesh, 3))
  context = jax.set_mesh(mesh) if set_mesh else sharding.use_mesh(mesh)
  with context:
    lowered = jax.jit(_loss_fn(config, path)).lower(params, x)
    assert ("all-to-all" in lowered.as_text(dialect="hlo")) == (mesh.shape["expert"] > 1)
    out = lowered.compile()(params, x)
  assert out[0][1][0].sharding.spec[0] is not None
  return out


@pytest.mark.parametrize("mesh_name,path,set_mesh", [
    ("expert4_data2", "capacity", False),
    ("expert2_fsdp2_tensor2", "capacity", False),
    ("expert8", "capacity", True),
    ("data2_fsdp2_tensor2", "ragged", False),  # no expert axis: local ragged_dot + psum
    pytest.param("expert2_fsdp2_tensor2", "ragged", False, marks=pytest.mark.slow),
])
def test_expert_parallel_matches_unsharded(mesh_name, path, set_mesh):
  """Forward, aux losses and gradients (params and input) equal the single-device layer."""
  params, x, want = _unsharded_reference()
  config = _config(path, n_experts=8, n_shared_experts=1)
  got = _sharded_run(config, path, params, x, MESHES[mesh_name], set_mesh)
  _assert_trees_close(got, want)


def test_expert_parallel_drops_per_device_group():
  """With drops, capacity is per device: equal to the layer run on each device's rows alone."""
  config = _config("capacity", n_experts=8, capacity_factor=1.0)
  params = _params(config, seed=21)
  params["router_kernel"] = params["router_kernel"].at[:, 3].add(0.7)
  x = _x(b=8, l=8, seed=22)
  apply = jax.jit(_layer(config, "capacity").apply)
  mesh = sharding.make_mesh({"expert": 4, "data": 2})
  with sharding.use_mesh(mesh):
    y, aux = jax.jit(_layer(config, "capacity").apply)(
        {"params": _nest(params)}, jax.device_put(x, sharding.batch_sharding(mesh, 3)))
  pieces = [apply({"params": _nest(params)}, x[i:i + 1]) for i in range(8)]
  np.testing.assert_allclose(np.asarray(y), np.concatenate([np.asarray(p[0]) for p in pieces]),
                             rtol=1e-4, atol=1e-5)
  drop = np.mean([float(p[1]["drop_fraction"]) for p in pieces])
  assert drop > 0
  np.testing.assert_allclose(float(aux["drop_fraction"]), drop, rtol=1e-6)


def test_expert_axis_must_divide_experts():
  config = _config("capacity", n_experts=4)
  with pytest.raises(ValueError, match="mesh.expert"):
    _sharded_run(config, "capacity", _params(config), _x(b=8, l=4), {"expert": 8})


def test_bad_dropless_impl_and_dense_config():
  with pytest.raises(ValueError, match="dropless_impl"):
    MoeMlp(_config(), dropless_impl="fast").init(jax.random.key(0), _x())
  with pytest.raises(ValueError, match="n_experts"):
    MoeMlp(ModelConfig(d_model=D)).init(jax.random.key(0), _x())


def test_params_carry_logical_names():
  config = _config("capacity", n_shared_experts=1)
  boxed = _flat(jax.eval_shape(_layer(config).init, jax.random.key(0), _x())["params"])
  names = {key: v.names for key, v in boxed.items() if isinstance(v, nn.LogicallyPartitioned)}
  assert names == {
      "router_kernel": ("embed", None),
      "wi_gate": ("expert", "embed", "mlp"), "wi_up": ("expert", "embed", "mlp"),
      "wo": ("expert", "mlp", "embed"),
      "shared_wi_gate": ("embed", "mlp"), "shared_wi_up": ("embed", "mlp"),
      "shared_wo": ("mlp", "embed"),
  }
