"""Learned positions: the sliced fast path (default 0..L-1 positions) equals the gather, in
the forward pass and in the gradient of the position table."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig
from model.transformer import Transformer

CONFIG = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_len=32,
                     pos_encoding="learned", norm="layer", activation="gelu")


def test_sliced_positions_equal_gathered_positions():
  model = Transformer(CONFIG)
  tokens_BL = jax.random.randint(jax.random.key(0), (3, 12), 0, CONFIG.vocab_size)
  params = nn.unbox(model.init(jax.random.key(1), tokens_BL)["params"])
  explicit_BL = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), (3, 12))

  def loss(p, positions_BL):
    logits_BLV, _ = model.apply({"params": p}, tokens_BL, positions_BL)
    return jnp.sum(jnp.tanh(logits_BLV))

  sliced, grads_sliced = jax.value_and_grad(loss)(params, None)
  gathered, grads_gathered = jax.value_and_grad(loss)(params, explicit_BL)
  np.testing.assert_allclose(sliced, gathered, rtol=1e-6)
  table_sliced = grads_sliced["pos_embed"]["embedding"]
  table_gathered = grads_gathered["pos_embed"]["embedding"]
  np.testing.assert_allclose(table_sliced, table_gathered, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(table_sliced)[12:] == 0)  # rows past L get no gradient
