"""The alignment objectives on an 8-device mesh (data x fsdp x tensor = 2 x 2 x 2) equal one
device: DPO (with its frozen reference copy), GRPO (with the KL to the reference) and PPO
(policy + critic): gradients of the loss, and loss and metrics over two train steps, on the
same batch. (Parameters after Adam steps are not compared: Adam's first update is lr *
sign(grad), so a gradient entry within rounding of 0 may flip a whole lr.)"""

import jax
import numpy as np
import pytest

from model import sharding
from model.chat import get_template
from model.tokenizer import ByteTokenizer
from train.config import build_config
from train.data import tasks as tasks_lib
from train.data.preference import build_preference_datasets
from train.rl.ppo_rollout import PpoRolloutDataset
from train.rl.rollout import RolloutDataset
from train.step import Trainer

ONE = dict(data=1)
EIGHT = dict(data=2, fsdp=2, tensor=2)


def _mesh(shape):
  n = int(np.prod(list(shape.values())))
  return sharding.make_mesh(shape, jax.devices()[:n])


def _base_params(config):
  trainer = Trainer(config, _mesh(ONE))
  return jax.device_get(trainer.full_params(*trainer.init(0)))


def _train(config, base, batch, shape, steps=2):
  trainer = Trainer(config, _mesh(shape))
  state, frozen = trainer.init_from(base, 0)
  if shape == EIGHT:  # really split: some parameter is sharded over several devices
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(state.params))
  grad = jax.jit(jax.grad(lambda p, f, b: trainer.objective(p, f, b, jax.random.key(0))[0]))
  with sharding.use_mesh(trainer.mesh):
    grads = jax.device_get(grad(state.params, frozen, trainer.global_batch(batch)))
  records = []
  for _ in range(steps):
    state, metrics = trainer.train_step(state, frozen, trainer.global_batch(batch))
    records.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return records, grads


def _assert_same(config, batch):
  base = _base_params(config)
  ref_records, ref_grads = _train(config, base, batch, ONE)
  records, grads = _train(config, base, batch, EIGHT)
  for got, want in zip(records, ref_records):
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-3, atol=1e-5, err_msg=k)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grads))
  assert scale > 0
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)
  return ref_records


def test_dpo_sharded_equals_one_device():
  config = build_config("experiments/dpo.py:tiny", [("train.warmup_steps", "0"),
                                                    ("train.learning_rate", "3e-3")])
  train_ds, _, _, _ = build_preference_datasets(ByteTokenizer(), "qa", config.data.seq_len,
                                                n_train_per_task=4, n_heldout_per_task=1)
  records = _assert_same(config, train_ds.batch(0, 0, config.train.batch_size))
  np.testing.assert_allclose(records[0]["preference_loss"], np.log(2), rtol=1e-5)


def _rollout(config, dataset_cls):
  trainer = Trainer(config, _mesh(ONE))
  state, frozen = trainer.init(0)
  data = dataset_cls(tasks_lib.mixture("train", 4, 0, ("arithmetic", "case")), ByteTokenizer(),
                     get_template("qa"), config.rl, config.data.seq_len)
  data.set_policy(trainer, state, frozen)
  return data.batch(0, 0, config.train.batch_size)


@pytest.mark.slow
def test_grpo_and_ppo_sharded_equal_one_device():
  grpo = build_config("experiments/grpo.py:tiny", [
      ("train.warmup_steps", "0"), ("train.learning_rate", "1e-2"), ("rl.kl_beta", "0.1"),
      ("rl.max_new_tokens", "6")])
  batch = dict(_rollout(grpo, RolloutDataset))
  batch["advantages"] = np.linspace(-1, 1, len(batch["advantages"]),
                                    dtype=np.float32).reshape(-1, 1)
  records = _assert_same(grpo, batch)
  assert records[1]["kl"] > 0  # the second step moved away from the reference
  ppo = build_config("experiments/ppo.py:tiny", [
      ("train.warmup_steps", "0"), ("train.learning_rate", "1e-2"), ("rl.reward", "task"),
      ("rl.max_new_tokens", "6")])
  batch = dict(_rollout(ppo, PpoRolloutDataset))
  mask = batch["weights"] > 0
  batch["advantages"] = np.where(mask, np.linspace(-1, 1, mask.size).reshape(mask.shape),
                                 0).astype(np.float32)
  records = _assert_same(ppo, batch)
  assert records[0]["value_loss"] > 0
