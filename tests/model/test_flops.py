"""FLOP / parameter counter: hand-computed numbers and agreement with the real parameter tree."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from model import flops
from model.config import ModelConfig, preset
from model.transformer import Transformer, count_params

# d=16, N=4 heads, K=2 kv heads, h=4, f=40 swiglu, V=100, 2 layers, rms pre-norm, rope, untied.
DENSE = ModelConfig(vocab_size=100, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                    d_ff=40, max_len=64)
# gelu, layer norm, learned positions, tied; layer 1 of 2 is MoE: 4 experts (f_e=8), top-2,
# one shared expert.
MOE = ModelConfig(vocab_size=100, d_model=16, n_layers=2, n_heads=4, d_ff=40,
                  activation="gelu", norm="layer", pos_encoding="learned", max_len=64,
                  tie_embeddings=True, n_experts=4, experts_per_token=2, moe_every=2,
                  d_ff_expert=8, n_shared_experts=1)


def test_dense_param_counts_by_hand():
  embedding = 100 * 16 + 16 * 100                     # token table + untied unembed
  attention = 16 * 4 * 4 + 2 * (16 * 2 * 4) + 4 * 4 * 16  # q + k,v + o = 768
  layer = attention + 2 * 16 + 3 * 16 * 40            # + 2 rms scales + swiglu = 2720
  non_embedding = 2 * layer + 16                      # + final norm = 5456
  assert non_embedding == 5456
  assert flops.param_counts(DENSE) == {
      "total": embedding + non_embedding, "non_embedding": non_embedding,
      "embedding": embedding, "active": embedding + non_embedding,
      "active_non_embedding": non_embedding}


def test_moe_param_counts_by_hand():
  embedding = 100 * 16 + 64 * 16                      # tied table + learned positions
  attention = 4 * (16 * 4 * 4)                        # q, k, v, o (MHA) = 1024
  norms = 2 * (2 * 2 * 16) + 2 * 16                   # 2 layer norms/block + final = 160
  dense_ffn = 2 * 16 * 40                             # gelu layer 0 = 1280
  expert = 2 * 16 * 8                                 # 256
  moe = 16 * 4 + 4 * expert + 1 * expert              # router + experts + shared = 1344
  moe_active = 16 * 4 + 2 * expert + 1 * expert       # 832
  non_embedding = 2 * attention + norms + dense_ffn + moe
  active_non_embedding = non_embedding - moe + moe_active
  assert (non_embedding, active_non_embedding) == (4832, 4320)
  assert flops.param_counts(MOE) == {
      "total": embedding + non_embedding, "non_embedding": non_embedding,
      "embedding": embedding, "active": embedding + active_non_embedding,
      "active_non_embedding": active_non_embedding}


def test_dense_flops_by_hand():
  s = 10
  attention = (2 * 16 * (16 + 2 * 2 * 4)   # q, k, v projections = 1024
               + 2 * s * 16                # QK^T = 320
               + 3 * 4 * s                 # softmax = 120
               + 2 * s * 16                # probs @ V = 320
               + 2 * 16 * 16)              # output projection = 512
  ffn = 2 * 3 * 16 * 40                    # 3840
  forward = 2 * (attention + ffn) + 2 * 16 * 100  # + logits 3200
  assert forward == 15472
  assert flops.flops_per_token(DENSE, s, "exact") == 3 * forward
  assert flops.flops_per_token(DENSE, s, "6n") == 6 * 5456
  assert flops.flops_per_token(DENSE, s, "6n", include_embedding=True) == 6 * (5456 + 3200)
  assert flops.flops_per_token(DENSE, s, "palm") == 6 * 5456 + 12 * 2 * 16 * s


def test_moe_flops_by_hand():
  s = 10
  attention = 2 * 16 * 48 + 2 * s * 16 + 3 * 4 * s + 2 * s * 16 + 2 * 16 * 16  # 2808
  dense_ffn = 2 * 2 * 16 * 40                                                 # 2560
  moe = 2 * (16 * 4 + 2 * 256 + 256)                                           # 1664
  forward = 2 * attention + dense_ffn + moe + 2 * 16 * 100
  assert forward == 13040
  assert flops.flops_per_token(MOE, s) == 3 * forward


def test_mfu_and_errors():
  assert flops.mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="method"):
    flops.flops_per_token(DENSE, 8, "7n")
  with pytest.raises(ValueError, match="peak"):
    flops.mfu(1.0, 1.0, 0.0)


def test_presets_are_sane():
  p = flops.param_counts(preset("125m"))
  assert 123e6 < p["total"] < 126e6  # GPT-2 small (without biases)
  assert p["active"] == p["total"]
  moe = flops.param_counts(preset("moe_125m"))
  assert moe["active"] < moe["total"]
  # Attention adds a few percent over 6N at 125m / seq 1024.
  c = preset("125m")
  ratio = flops.flops_per_token(c, 1024, "exact") / flops.flops_per_token(c, 1024, "6n")
  assert 1.0 < ratio < 2.0


@pytest.mark.parametrize("config", [
    DENSE,
    dataclasses.replace(DENSE, scan_layers=False, norm_position="post", tie_embeddings=True),
    dataclasses.replace(DENSE, activation="relu", norm="layer", pos_encoding="learned",
                        n_kv_heads=1, d_head=8, d_ff=0),
    dataclasses.replace(DENSE, pos_encoding="sinusoidal", activation="gelu", n_layers=3),
    MOE,
    dataclasses.replace(MOE, n_layers=4, scan_layers=False, activation="swiglu",
                        n_shared_experts=0, norm="rms"),
])
def test_param_counts_match_real_init(config):
  if config.is_moe:
    pytest.importorskip("model.moe")
  tokens = jnp.zeros((1, 4), jnp.int32)
  abstract = jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0), tokens)
  params = abstract["params"]
  counts = flops.param_counts(config)
  assert count_params(params) == counts["total"]
  embedding = count_params(params["embed"]) + count_params(params.get("unembed", {})) + \
      count_params(params.get("pos_embed", {}))
  assert embedding == counts["embedding"]


def test_flops_module_imports_no_jax():
  code = "import sys, model.flops; assert 'jax' not in sys.modules, 'flops imported jax'"
  subprocess.run([sys.executable, "-c", code], check=True)
