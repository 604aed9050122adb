"""Encoder FLOP counts against hand-computed values."""

import dataclasses

import pytest

from model import flops
from model.config import ModelConfig

# d=16, N=4 heads, K=2 kv heads, h=4, f=40 swiglu, V=100, 2 layers.
ENC = ModelConfig(arch="encoder", vocab_size=100, d_model=16, n_layers=2, n_heads=4,
                  n_kv_heads=2, d_ff=40, max_len=64)
S = 10


def test_encoder_mlm_forward_by_hand():
  proj = 2 * 16 * (16 + 2 * 2 * 4) + 2 * 16 * 16   # q,k,v + out = 1024 + 512
  core = 2 * S * 16 + 3 * 4 * S + 2 * S * 16       # QK^T + softmax + PV (all S keys) = 760
  ffn = 2 * 3 * 16 * 40                            # swiglu = 3840
  per_token = 2 * (proj + core + ffn) + 2 * 16 * 100  # + logits = 15472
  assert per_token == 15472
  assert flops.encoder_forward_flops_per_sequence(ENC, S, "mlm") == S * per_token
  # Chinchilla's count does not discount causal masking: per token an MLM encoder and a
  # decoder of the same shape cost the same.
  dec = dataclasses.replace(ENC, arch="decoder")
  assert flops.forward_flops_per_token(dec, S) * S == S * per_token


def test_encoder_classifier_forward_by_hand():
  blocks = S * (2 * (1536 + 760 + 3840))           # no [L, V] logits = 122720
  mean_pool = S * 16
  head = 2 * 16 * 3
  assert flops.encoder_forward_flops_per_sequence(ENC, S, "classify", n_labels=3) == (
      blocks + mean_pool + head)
  assert flops.encoder_forward_flops_per_sequence(
      ENC, S, "classify", n_labels=3, pooling="first") == blocks + head
  with pytest.raises(ValueError, match="n_labels"):
    flops.encoder_forward_flops_per_sequence(ENC, S, "classify")


def test_visible_attention_bidirectional_vs_causal_by_hand():
  # bidirectional: every query sees S=10 keys; causal: (S + 1) / 2 = 5.5 on average.
  per_key = 2 * 16 + 3 * 4 + 2 * 16                # 76 per query-key pair, per layer
  assert flops.visible_attention_flops_per_token(ENC, S, "bidirectional") == 2 * S * per_key
  assert flops.visible_attention_flops_per_token(ENC, S, "causal") == 2 * 5.5 * per_key
  with pytest.raises(ValueError, match="mask"):
    flops.visible_attention_flops_per_token(ENC, S, "prefix")
