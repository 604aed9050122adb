"""Learning-rate schedule and the weight-decay mask."""

import jax.numpy as jnp
import numpy as np
import pytest

from train.config import TrainConfig
from train.optimizer import learning_rate_schedule, weight_decay_mask


def test_schedule_warmup_cosine_floor():
  config = TrainConfig(steps=110, learning_rate=1.0, warmup_steps=10, lr_floor=0.1)
  schedule = learning_rate_schedule(config)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  # Half-way through the cosine: floor + (1 - floor) / 2.
  assert float(schedule(60)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)
  assert float(schedule(110)) == pytest.approx(0.1)


def test_weight_decay_mask_skips_embeddings_norms_biases():
  params = {
      "embed": {"embedding": jnp.zeros((8, 4))},
      "layers": {"attn": {"q": {"kernel": jnp.zeros((2, 4, 4))}},
                 "pre_attn_norm": {"scale": jnp.zeros((2, 4))},
                 "mlp": {"bias": jnp.zeros((2, 4)), "wi": {"kernel": jnp.zeros((2, 4, 8))}}},
      "final_norm": {"scale": jnp.zeros((4,))},
  }
  mask = weight_decay_mask(params)
  assert mask["layers"]["attn"]["q"]["kernel"] and mask["layers"]["mlp"]["wi"]["kernel"]
  assert not mask["embed"]["embedding"]
  assert not mask["layers"]["pre_attn_norm"]["scale"]
  assert not mask["layers"]["mlp"]["bias"]
  assert not mask["final_norm"]["scale"]
  everything = weight_decay_mask(params, decay_norms_and_embeddings=True)
  assert all(np.asarray(list(__import__("jax").tree.leaves(everything))))
