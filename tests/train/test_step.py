"""Train step: loss against a reference, sharded == single device, grad accumulation, NaN guard."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sharding
from model.config import ModelConfig
from train.config import Config, DataConfig, MeshConfig, TrainConfig
from train.step import Trainer, cross_entropy

MODEL = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                    max_len=16)
CONFIG = Config(model=MODEL, data=DataConfig(seq_len=16),
                train=TrainConfig(steps=10, batch_size=8, learning_rate=1e-2, warmup_steps=2))


def _batch(seed=0, rows=8, length=16, vocab=64):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, size=(rows, length + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def _mesh(**shape):
  devices = jax.devices()
  n = int(np.prod(list(shape.values()))) if shape else 1
  return sharding.make_mesh({"data": 1, **shape}, devices[:n])


def _run(config, mesh, steps=2):
  trainer = Trainer(config, mesh)
  state = trainer.init(0)
  losses = []
  for step in range(steps):
    state, metrics = trainer.train_step(state, trainer.global_batch(_batch(step)))
    losses.append(float(metrics["loss"]))
  return jax.device_get(state.params), losses


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
  targets = rng.integers(0, 5, size=(2, 3))
  total, count = cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  expected = (log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]).sum()
  np.testing.assert_allclose(float(total), expected, rtol=1e-5)
  assert float(count) == 6


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
  state = trainer.init(0)
  specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)}
  assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs


def test_grad_accumulation_matches_full_batch(single_device_run):
  config = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, grad_accum=2))
  params, losses = _run(config, _mesh())
  ref_params, ref_losses = single_device_run
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_nonfinite_loss_leaves_state_unchanged():
  trainer = Trainer(CONFIG, _mesh())
  state = trainer.init(0)
  poisoned = jax.device_get(state.params)
  poisoned["embed"] = jax.tree.map(lambda x: x * np.nan, poisoned["embed"])
  state = state.replace(params=jax.device_put(poisoned, trainer.state_shardings.params))
  new_state, metrics = trainer.train_step(state, trainer.global_batch(_batch()))
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
