"""Weight-only quantization (model/quant.py): error bounds, packing, the Projection hook,
quantized models vs float, sharded loading, and QAT's straight-through estimator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import quant, sharding
from model.config import ModelConfig
from model.layers import Projection
from model.peft import PeftConfig
from model.quant import QuantConfig
from model.transformer import Transformer

CONFIG = ModelConfig(vocab_size=264, d_model=32, n_layers=2, n_heads=2, max_len=64)
CASES = [("int8", 0, True), ("int8", 0, False), ("int4", 32, True), ("int4", 32, False),
         ("int4", 0, True)]


def _step_bound(q, rows, group_size):
  """Half a quantization step per element: s / 2 expanded over each group's rows."""
  s = np.asarray(q["kernel_scale"])
  g = rows if group_size == 0 else group_size
  return np.repeat(s, g, axis=-2)[..., :rows, :] / 2


@pytest.mark.parametrize("scheme,group_size,symmetric", CASES)
def test_error_within_half_step(scheme, group_size, symmetric):
  w = jax.random.normal(jax.random.key(0), (3, 100, 24)) * jnp.linspace(0.1, 3, 24)
  q = quant.quantize(w, scheme, group_size, symmetric)
  dq = np.asarray(quant.dequantize(q, 100))
  err = np.abs(dq - np.asarray(w))
  bound = _step_bound(q, 100, group_size if scheme == "int4" else 0)
  assert (err <= bound * (1 + 1e-5) + 1e-7).all()
  assert err.max() > 0  # really quantized
  want_dtype = np.uint8 if scheme == "int4" else np.int8
  assert q["kernel_q"].dtype == want_dtype
  padded = 128 if group_size == 32 else 100
  assert q["kernel_q"].shape[-2] == (padded // 2 if scheme == "int4" else padded)


def test_int8_is_per_output_channel_and_exact_on_grid():
  s_O = jnp.array([0.5, 0.01, 2.0])
  ints = jax.random.randint(jax.random.key(1), (16, 3), -127, 128).at[0].set(127)
  w = ints * s_O
  q = quant.quantize(w, "int8")
  assert q["kernel_scale"].shape == (1, 3)
  np.testing.assert_allclose(np.asarray(quant.dequantize(q)), np.asarray(w), rtol=1e-6)


def test_int4_packing_round_trips_bit_exactly():
  u = jax.random.randint(jax.random.key(2), (2, 64, 5), 0, 16).astype(jnp.uint8)
  packed = quant.pack_int4(u)
  assert packed.shape == (2, 32, 5) and packed.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(quant.unpack_int4(packed)), np.asarray(u))
  # Row 2i is the low nibble, row 2i+1 the high one.
  assert int(packed[0, 0, 0]) == int(u[0, 0, 0]) | (int(u[0, 1, 0]) << 4)


def test_zero_weights_do_not_divide_by_zero():
  q = quant.quantize(jnp.zeros((64, 4)), "int4", 32, symmetric=False)
  assert np.all(np.asarray(quant.dequantize(q)) == 0)


@pytest.mark.parametrize("scheme,group_size,symmetric", CASES[1:4])
def test_quantized_projection_equals_float_matmul_of_dequantized(scheme, group_size,
                                                                 symmetric):
  qc = QuantConfig(scheme=scheme, group_size=group_size, symmetric=symmetric)
  shape, axes = (2, 16, 32), ("heads", "head_dim", "embed")  # two contracted axes
  w = jax.random.normal(jax.random.key(3), shape) * 0.1
  qparams = quant.quantize(w.reshape(32, 32), scheme, group_size, symmetric)
  proj = Projection(CONFIG, PeftConfig(), shape, axes, 2, role="attn.out", quant=qc)
  x = jax.random.normal(jax.random.key(4), (2, 5, 2, 16))
  y = proj.apply({"params": qparams}, x)
  w_dq = quant.dequantize(qparams).reshape(shape)
  np.testing.assert_allclose(np.asarray(y), np.asarray(jnp.einsum("blnh,nhd->bld", x, w_dq)),
                             rtol=1e-5, atol=1e-5)


def test_head_and_adapters_stay_float_unless_asked():
  qc = QuantConfig(scheme="int8")
  assert not qc.applies("head") and not qc.applies("adapter.up") and qc.applies("mlp.wo")
  assert QuantConfig(scheme="int8", include_head=True).applies("head")
  with pytest.raises(ValueError, match="exclude each other"):
    QuantConfig(scheme="int8", qat="int4")
  with pytest.raises(ValueError, match="--config.quant.scheme"):
    QuantConfig(scheme="int2")


@pytest.fixture(scope="module")
def float_model():
  tokens = jax.random.randint(jax.random.key(5), (2, 24), 0, CONFIG.vocab_size)
  params = Transformer(CONFIG).init(jax.random.key(0), tokens)["params"]
  logits, _ = Transformer(CONFIG).apply({"params": params}, tokens)
  return tokens, params, logits


def _quantized(params, qc, tokens):
  model = Transformer(CONFIG, PeftConfig(), qc)
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))["params"]
  return model, quant.quantize_params(params, target, qc)


@pytest.mark.parametrize("scheme,group_size,tol", [("int8", 0, 0.02), ("int4", 32, 0.25)])
def test_quantized_model_logits_close_to_float(float_model, scheme, group_size, tol):
  tokens, params, logits = float_model
  qc = QuantConfig(scheme=scheme, group_size=group_size, include_head=True)
  model, qparams = _quantized(params, qc, tokens)
  leaf = qparams["layers"]["block_0"]["mlp"]["wo"]
  assert "kernel" not in leaf and leaf["kernel_q"].dtype == (
      jnp.uint8 if scheme == "int4" else jnp.int8)
  assert quant.tree_bytes(qparams) < quant.tree_bytes(params) / 2
  q_logits, _ = model.apply({"params": qparams}, tokens)
  rel = float(jnp.linalg.norm(q_logits - logits) / jnp.linalg.norm(logits))
  print(f"{scheme}: relative logit error {rel:.4f}")
  assert 0 < rel < tol
  if scheme == "int8":  # argmax mostly preserved
    assert float(jnp.mean(jnp.argmax(q_logits, -1) == jnp.argmax(logits, -1))) > 0.9


def test_quantized_params_shard_with_their_weights_on_8_devices(float_model):
  tokens, params, logits = float_model
  qc = QuantConfig(scheme="int4", group_size=32)
  model, qparams = _quantized(params, qc, tokens)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with sharding.use_mesh(mesh):
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))["params"]
  shardings = sharding.tree_shardings(boxed, mesh)
  placed = jax.tree.map(jax.device_put, qparams, shardings)
  up = placed["layers"]["block_0"]["mlp"]["wi_up"]  # [layers, embed, mlp] view
  assert tuple(up["kernel_q"].sharding.spec) == (None, "fsdp", "tensor")
  assert tuple(up["kernel_scale"].sharding.spec) == (None, None, "tensor")  # 1 group
  with sharding.use_mesh(mesh):
    sharded_logits, _ = jax.jit(lambda p: model.apply({"params": p}, tokens))(placed)
  ref_logits, _ = model.apply({"params": qparams}, tokens)
  np.testing.assert_allclose(np.asarray(sharded_logits), np.asarray(ref_logits),
                             rtol=1e-5, atol=1e-5)


def test_ste_gradient_identity_inside_range_zero_outside():
  s = jnp.full((1, 3), 0.1)
  w = jnp.array([[0.05, 0.9, 0.2], [-0.3, -0.74, 0.0], [0.69, 0.1, -0.5]])
  inside = np.abs(np.asarray(w)) / 0.1 <= 7.5  # int4 symmetric: |round(w/s)| <= 7
  grad = jax.grad(lambda w: jnp.sum(quant.fake_quant_with(w, s, None, 4, True) * 3.0))(w)
  np.testing.assert_array_equal(np.asarray(grad), np.where(inside, 3.0, 0.0))
  assert not inside.all() and inside.any()
  # Forward: clipped to +-7 steps outside the range.
  out = np.asarray(quant.fake_quant_with(w, s, None, 4, True))
  np.testing.assert_allclose(out[0, 1], 0.7, rtol=1e-6)


def test_qat_forward_gradient_is_identity_with_absmax_scales():
  w = jax.random.normal(jax.random.key(6), (64, 8))
  grad = jax.grad(lambda w: jnp.sum(quant.fake_quant(w, "int4", 32) * w.shape[0]))(w)
  np.testing.assert_array_equal(np.asarray(grad), np.full(w.shape, 64.0))


@pytest.mark.parametrize("qat,group_size,symmetric", [("int4", 32, True), ("int8", 0, False),
                                                      ("int4", 32, False)])
def test_qat_export_is_bit_identical(float_model, qat, group_size, symmetric):
  """The fake-quant forward of a QAT model equals the stored model's forward exactly."""
  tokens, params, _ = float_model
  qat_model = Transformer(CONFIG, PeftConfig(),
                          QuantConfig(qat=qat, group_size=group_size, symmetric=symmetric))
  fq_logits, _ = jax.jit(lambda p: qat_model.apply({"params": p}, tokens))(params)
  stored = QuantConfig(scheme=qat, group_size=group_size, symmetric=symmetric)
  model, qparams = _quantized(params, stored, tokens)
  q_logits, _ = jax.jit(lambda p: model.apply({"params": p}, tokens))(qparams)
  np.testing.assert_array_equal(np.asarray(fq_logits), np.asarray(q_logits))


def test_moe_experts_quantize_through_weight():
  """Stacked expert kernels [E, D, F] quantize per expert and enter the MoE dispatch whole."""
  import dataclasses
  config = dataclasses.replace(CONFIG, n_layers=1, n_experts=4, n_shared_experts=1)
  tokens = jax.random.randint(jax.random.key(8), (2, 8), 0, config.vocab_size)
  params = Transformer(config).init(jax.random.key(0), tokens)["params"]
  qc = QuantConfig(scheme="int8")
  model = Transformer(config, PeftConfig(), qc)
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))["params"]
  qparams = quant.quantize_params(params, target, qc)
  experts = qparams["layers"]["block_0"]["moe"]["wi_gate"]
  assert experts["kernel_q"].shape == (1, 4, 32, config.expert_ffw_dim)
  assert experts["kernel_scale"].shape == (1, 4, 1, config.expert_ffw_dim)
  logits, _ = Transformer(config).apply({"params": params}, tokens)
  q_logits, _ = model.apply({"params": qparams}, tokens)
  assert float(jnp.linalg.norm(q_logits - logits) / jnp.linalg.norm(logits)) < 0.02


def test_dequantize_params_gives_the_float_model_of_the_quantized_one(float_model):
  tokens, params, _ = float_model
  qc = QuantConfig(scheme="int4", group_size=32, symmetric=False)
  model, qparams = _quantized(params, qc, tokens)
  shapes = quant.kernel_shapes(params)
  float_params = quant.dequantize_params(qparams, shapes)
  assert float_params["layers"]["block_0"]["mlp"]["wo"]["kernel"].shape == shapes[
      ("layers", "block_0", "mlp", "wo")]
  want, _ = model.apply({"params": qparams}, tokens)
  got, _ = Transformer(CONFIG).apply({"params": float_params}, tokens)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_quantized_checkpoint_loads_on_another_mesh(float_model, tmp_path):
  """Saved from one device, restored with fsdp=2 x tensor=2 x data=2: same logits."""
  import dataclasses
  import os

  import flax.linen as nn

  from infer.loading import load_model
  from model import store
  from model.mesh import MeshConfig
  from model.tokenizer import ByteTokenizer
  tokens, params, _ = float_model
  qc = QuantConfig(scheme="int4", group_size=32)
  model, qparams = _quantized(nn.unbox(params), qc, tokens)
  workdir = str(tmp_path / "q4")
  store.write_run_config(workdir, {"model": dataclasses.asdict(CONFIG),
                                   "quant": dataclasses.asdict(qc)})
  ByteTokenizer().save(os.path.join(workdir, store.TOKENIZER_DIR))
  manager = store.checkpoint_manager(workdir, async_save=False)
  store.save_checkpoint(manager, 1, jax.device_get(qparams), force=True)
  manager.wait_until_finished()
  manager.close()
  loaded = load_model(workdir, mesh_config=MeshConfig(data=2, fsdp=2, tensor=2))
  assert loaded.quant == qc
  q = loaded.params["layers"]["block_0"]["attn"]["query"]["kernel_q"]
  assert q.dtype == jnp.uint8 and len(q.sharding.device_set) == 8
  assert tuple(q.sharding.spec) == (None, "fsdp", "tensor")
  with sharding.use_mesh(loaded.mesh):
    got, _ = jax.jit(lambda p: model.apply({"params": p}, tokens))(loaded.params)
  want, _ = model.apply({"params": qparams}, tokens)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
