"""Train step: loss against a reference, sharded == single device, unbiased grad accumulation,
NaN guard."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sharding
from model.config import ModelConfig
from model.mesh import MeshConfig
from train.config import Config, DataConfig, TrainConfig
from train.objectives.common import token_cross_entropy
from train.step import Trainer

MODEL = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                    max_len=16)
CONFIG = Config(model=MODEL, data=DataConfig(seq_len=16),
                train=TrainConfig(steps=10, batch_size=8, learning_rate=1e-2, warmup_steps=2))


def _batch(seed=0, rows=8, length=16, vocab=64, uneven_weights=False):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, size=(rows, length + 1)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  if uneven_weights:
    # Rows 0-3 (the first micro-batch of 2) keep 2 target tokens each, rows 4-7 keep all 16:
    # a per-micro-batch mean would weight the first half's 8 tokens like the other 64.
    weights = np.ones((rows, length), np.float32)
    weights[:rows // 2, 2:] = 0.0
    batch["weights"] = weights
  return batch


def _mesh(**shape):
  devices = jax.devices()
  n = int(np.prod(list(shape.values()))) if shape else 1
  return sharding.make_mesh({"data": 1, **shape}, devices[:n])


def _run(config, mesh, steps=2, uneven_weights=False):
  trainer = Trainer(config, mesh)
  state, frozen = trainer.init(0)
  losses = []
  for step in range(steps):
    batch = trainer.global_batch(_batch(step, uneven_weights=uneven_weights))
    state, metrics = trainer.train_step(state, frozen, batch)
    losses.append(float(metrics["loss"]))
  return jax.device_get(state.params), losses


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
  targets = rng.integers(0, 5, size=(2, 3))
  ce, correct = token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  expected = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(ce), expected, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(correct), logits.argmax(-1) == targets)
  # The gradient is softmax - onehot (the stabilising max carries none), and extreme logits
  # stay finite.
  grad = jax.grad(lambda x: token_cross_entropy(x, jnp.asarray(targets))[0].sum())(
      jnp.asarray(logits))
  probs = np.exp(logits - log_z[..., None].astype(np.float32))
  np.testing.assert_allclose(np.asarray(grad), probs - np.eye(5)[targets], atol=1e-6)
  big_ce, _ = token_cross_entropy(jnp.asarray(logits * 1e4), jnp.asarray(targets))
  assert np.all(np.isfinite(np.asarray(big_ce)))


@pytest.fixture(scope="module")
def single_device_run():
  return _run(CONFIG, _mesh())


@pytest.mark.parametrize("shape", [dict(data=2, fsdp=2, tensor=2), dict(fsdp=4, tensor=2),
                                   dict(data=8)])
def test_sharded_train_steps_match_single_device(single_device_run, shape):
  ref_params, ref_losses = single_device_run
  params, losses = _run(CONFIG, _mesh(**shape))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_params_are_actually_sharded():
  trainer = Trainer(CONFIG, _mesh(fsdp=2, tensor=2))
  state, _ = trainer.init(0)
  specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)}
  assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs


def test_grad_accumulation_matches_full_batch(single_device_run):
  config = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, grad_accum=2))
  params, losses = _run(config, _mesh())
  ref_params, ref_losses = single_device_run
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_grad_accumulation_with_uneven_token_weights_matches_full_batch():
  """The step sums loss and gradients over micro-batches and divides once by the total
  weight, so micro-batches with different numbers of target tokens are not re-weighted."""
  full_params, full_losses = _run(CONFIG, _mesh(), uneven_weights=True)
  config = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, grad_accum=2))
  params, losses = _run(config, _mesh(), uneven_weights=True)
  np.testing.assert_allclose(losses, full_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(full_params)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
  # The loss really is the token-weighted mean: recompute it at the initial parameters.
  trainer = Trainer(CONFIG, _mesh())
  state, frozen = trainer.init(0)
  batch = _batch(0, uneven_weights=True)
  logits, _ = trainer.model.apply({"params": state.params}, jnp.asarray(batch["inputs"]))
  ce, _ = token_cross_entropy(logits, jnp.asarray(batch["targets"]))
  want = float(np.sum(np.asarray(ce) * batch["weights"]) / batch["weights"].sum())
  assert full_losses[0] == pytest.approx(want, rel=1e-5)
  per_micro = [float(np.sum(np.asarray(ce)[s] * batch["weights"][s]) / batch["weights"][s].sum())
               for s in (slice(0, 4), slice(4, 8))]
  assert abs(np.mean(per_micro) - want) > 1e-3  # the biased average would differ


def test_nonfinite_loss_leaves_state_unchanged():
  trainer = Trainer(CONFIG, _mesh())
  state, frozen = trainer.init(0)
  poisoned = jax.device_get(state.params)
  poisoned["embed"] = jax.tree.map(lambda x: x * np.nan, poisoned["embed"])
  state = state.replace(params=jax.device_put(poisoned, trainer.state_shardings.params))
  new_state, metrics = trainer.train_step(state, frozen, trainer.global_batch(_batch()))
  assert not bool(metrics["finite"])
  for after, before in zip(jax.tree.leaves(jax.device_get(new_state.params)),
                           jax.tree.leaves(poisoned)):
    np.testing.assert_array_equal(after, before)  # NaNs compare equal here
  assert int(new_state.step) == 1


def test_batch_size_must_divide_mesh():
  config = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, batch_size=6))
  with pytest.raises(ValueError, match="multiple of"):
    Trainer(config, _mesh(data=4)).check_batch_size()


def test_bad_mesh_is_a_clear_error():
  with pytest.raises(ValueError, match="devices"):
    sharding.make_mesh(MeshConfig(data=3, fsdp=1).as_dict(), jax.devices())
