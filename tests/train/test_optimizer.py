"""Learning-rate schedule and the weight-decay mask."""

import jax
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


def test_weight_decay_by_role_decays_the_untied_head_and_lora_not_the_soft_prompt():
  """`unembed/kernel` contains "embed": a path-substring rule once left it undecayed."""
  params = {
      "unembed": {"kernel": jnp.zeros((4, 8))},
      "pos_embed": {"embedding": jnp.zeros((16, 4))},
      "soft_prompt": jnp.zeros((3, 4)),
      "layers": {"attn": {"query": {"kernel": jnp.zeros((2, 4, 2, 2)),
                                    "lora_a": jnp.zeros((2, 4, 1)),
                                    "lora_b": jnp.zeros((2, 1, 2, 2))}},
                 "moe": {"router_kernel": jnp.zeros((2, 4, 4))}},
  }
  mask = weight_decay_mask(params)
  assert mask["unembed"]["kernel"]
  assert mask["layers"]["attn"]["query"]["lora_a"] and mask["layers"]["attn"]["query"]["lora_b"]
  assert mask["layers"]["moe"]["router_kernel"]
  assert not mask["pos_embed"]["embedding"] and not mask["soft_prompt"]


def test_adamw_applies_decay_to_the_head_only_where_the_mask_says():
  """With zero gradients, only decayed leaves move (by lr * wd * w)."""
  import optax
  from train.optimizer import make_optimizer
  config = TrainConfig(steps=10, learning_rate=0.1, warmup_steps=0, weight_decay=0.5,
                       grad_clip=0.0)
  params = {"unembed": {"kernel": jnp.ones((2, 2))}, "embed": {"embedding": jnp.ones((2, 2))}}
  opt = make_optimizer(config)
  updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(np.asarray(new["unembed"]["kernel"]), 1 - 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(new["embed"]["embedding"]), 1.0)
