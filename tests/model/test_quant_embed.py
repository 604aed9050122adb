"""Quantized embeddings (quant.include_embed, model/quant_embed.py): every looked-up row
and every tied-head logit within the scheme's analytic bound, the whole model's logits
close to float (tied and untied heads), dequantize_params round trip, and QAT with the
embedding exporting to bit-identical logits."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import quant
from model.config import ModelConfig
from model.peft import PeftConfig
from model.quant import QuantConfig
from model.quant_embed import QuantEmbed
from model.transformer import Transformer

UNTIED = ModelConfig(vocab_size=264, d_model=64, n_layers=1, n_heads=2, max_len=32)
TIED = dataclasses.replace(UNTIED, tie_embeddings=True)
CASES = [("int8", 0, True), ("int8", 0, False), ("int4", 32, True), ("int4", 16, False)]


def _half_step_DV(qleaves, d_model, group_size):
  """s / 2 per element of the [D, V] view (each scale repeated over its group's dims)."""
  s = np.asarray(qleaves["kernel_scale"])
  g = d_model if group_size == 0 else group_size
  return np.repeat(s, g, axis=0)[:d_model] / 2


def _quantize(config, params, qc, tokens):
  model = Transformer(config, PeftConfig(), qc)
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))["params"]
  return model, quant.quantize_params(params, target, qc)


@pytest.fixture(scope="module")
def tied_model():
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, TIED.vocab_size)
  params = nn.unbox(Transformer(TIED).init(jax.random.key(0), tokens)["params"])
  return tokens, params


@pytest.mark.parametrize("scheme,group_size,symmetric", CASES)
def test_rows_and_tied_logits_within_the_analytic_bound(tied_model, scheme, group_size,
                                                        symmetric):
  tokens, params = tied_model
  qc = QuantConfig(scheme=scheme, group_size=group_size, symmetric=symmetric,
                   include_embed=True)
  _, qparams = _quantize(TIED, params, qc, tokens)
  leaves = qparams["embed"]
  assert "embedding" not in leaves and leaves["kernel_q"].dtype == (
      jnp.uint8 if scheme == "int4" else jnp.int8)
  table_VD = np.asarray(params["embed"]["embedding"])
  bound_DV = _half_step_DV(leaves, TIED.d_model, group_size)
  embed = QuantEmbed(TIED, qc)
  rows_BLD = np.asarray(embed.apply({"params": leaves}, tokens))
  want_BLD = table_VD[np.asarray(tokens)]
  err_BLD = np.abs(rows_BLD - want_BLD)
  assert np.all(err_BLD <= bound_DV.T[np.asarray(tokens)] * (1 + 1e-5) + 1e-7)
  assert err_BLD.max() > 0  # it really is quantized
  # The tied head: |x . (w - w_q)| <= sum_d |x_d| s_dv / 2 for every logit.
  x_BLD = jax.random.normal(jax.random.key(2), (2, 3, TIED.d_model))
  got_BLV = np.asarray(embed.apply({"params": leaves}, x_BLD, method=QuantEmbed.attend))
  want_BLV = np.einsum("bld,vd->blv", np.asarray(x_BLD), table_VD)
  bound_BLV = np.einsum("bld,dv->blv", np.abs(np.asarray(x_BLD)), bound_DV)
  assert np.all(np.abs(got_BLV - want_BLV) <= bound_BLV * (1 + 1e-4) + 1e-5)


@pytest.mark.parametrize("config", [TIED, UNTIED], ids=["tied", "untied"])
@pytest.mark.parametrize("scheme,group_size,tol", [("int8", 0, 0.03), ("int4", 32, 0.3)])
def test_model_logits_close_to_float_and_dequantize_round_trip(config, scheme, group_size,
                                                               tol):
  tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, config.vocab_size)
  params = nn.unbox(Transformer(config).init(jax.random.key(0), tokens)["params"])
  logits, _ = Transformer(config).apply({"params": params}, tokens)
  qc = QuantConfig(scheme=scheme, group_size=group_size, include_embed=True,
                   include_head=True)
  model, qparams = _quantize(config, params, qc, tokens)
  q_logits, _ = model.apply({"params": qparams}, tokens)
  rel = float(jnp.linalg.norm(q_logits - logits) / jnp.linalg.norm(logits))
  assert 0 < rel < tol
  # The embedding's bytes shrink too: the whole tree, not only the projections.
  before, after = quant.projection_bytes(params, qparams)
  assert after < before / (3.5 if scheme == "int8" else 5.0)
  assert quant.tree_bytes(qparams) < quant.tree_bytes(params) / (3 if scheme == "int8" else 4)
  # Dequantized back to a float tree, the plain model gives the quantized model's logits.
  shapes = quant.kernel_shapes(params)
  floats = quant.dequantize_params(qparams, shapes)
  assert floats["embed"]["embedding"].shape == params["embed"]["embedding"].shape
  f_logits, _ = Transformer(config).apply({"params": floats}, tokens)
  np.testing.assert_allclose(np.asarray(f_logits), np.asarray(q_logits), atol=2e-5)


def test_embed_is_float_unless_asked_and_qat_export_is_bit_identical(tied_model):
  assert not QuantConfig(scheme="int8").applies("embed")
  assert QuantConfig(scheme="int8", include_embed=True).applies("embed")
  tokens, params = tied_model
  qat = QuantConfig(qat="int4", group_size=16, include_embed=True)
  fake_logits, _ = Transformer(TIED, PeftConfig(), qat).apply({"params": params}, tokens)
  stored = QuantConfig(scheme="int4", group_size=16, include_embed=True)
  model, qparams = _quantize(TIED, params, stored, tokens)
  q_logits, _ = model.apply({"params": qparams}, tokens)
  np.testing.assert_array_equal(np.asarray(fake_logits), np.asarray(q_logits))
  # The straight-through gradient reaches the float table in QAT.
  grad = jax.grad(lambda p: jnp.sum(Transformer(TIED, PeftConfig(), qat).apply(
      {"params": p}, tokens)[0] ** 2))(params)
  assert float(jnp.abs(grad["embed"]["embedding"]).max()) > 0
