"""Encoder-decoder parameter and FLOP counts against hand-computed values and the real tree."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from model import flops
from model.config import ModelConfig
from model.encoder_decoder import EncoderDecoder

# d=8, 2 query heads, 1 kv head of width 4, relu FFN of width 32, vocab 10, one layer.
HAND = ModelConfig(arch="encoder_decoder", vocab_size=10, d_model=8, n_layers=1, n_heads=2,
                   n_kv_heads=1, activation="relu", max_len=16)


def test_params_by_hand():
  # attention 8*8 + 2*8*4 + 8*8 = 192; norm 8; FFN 8*32*2 = 512
  # encoder 192 + 2*8; decoder 2*192 + 3*8; two final norms 16; two FFNs 1024
  counts = flops.param_counts(HAND)
  assert counts["non_embedding"] == 208 + 408 + 16 + 1024
  assert counts["embedding"] == 10 * 8 * 2
  assert counts["total"] == 1816


def test_forward_flops_by_hand():
  # projections 2*8*(8+8) + 2*8*8 = 384 per token; attention core 38 per key; FFN 1024
  got = flops.encoder_decoder_forward_flops(HAND, source_len=3, target_len=2)
  assert got["encoder"] == 3 * (384 + 38 * 3 + 1024)
  assert got["cross_kv"] == 3 * 2 * 8 * 2 * 4
  assert got["decoder"] == 2 * ((384 + 38 * 2) + (128 + 128 + 38 * 3) + 1024)
  assert got["logits"] == 2 * 2 * 8 * 10
  assert got["total"] == 4566 + 384 + 3708 + 320
  assert flops.flops_per_token(HAND, 2, source_len=3) == 3 * 8978 // 2
  with pytest.raises(ValueError, match="exact"):
    flops.flops_per_token(HAND, 2, "6n")


@pytest.mark.parametrize("overrides", [
    {}, dict(n_experts=4, experts_per_token=2, d_ff_expert=16, moe_every=1),
    dict(pos_encoding="learned", tie_embeddings=True, norm="layer", norm_position="post")])
def test_param_counts_match_the_tree(overrides):
  config = dataclasses.replace(HAND, n_layers=2, **overrides)
  tokens = jnp.zeros((1, 4), jnp.int32)
  params = jax.eval_shape(lambda: nn.unbox(EncoderDecoder(config).init(
      jax.random.key(0), tokens, source_BS=tokens)["params"]))
  assert flops.param_counts(config)["total"] == sum(x.size for x in jax.tree.leaves(params))
