"""DPO family: hand-computed losses, log 2 at the start, gradients push chosen up and
rejected down, the reference (a frozen copy, or the LoRA-off base) never changes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sharding
from model.tokenizer import ByteTokenizer
from train.config import build_config
from train.data.preference import build_preference_datasets
from train.objectives import pairs
from train.objectives.dpo import preference_loss
from train.step import Trainer

LOG2 = math.log(2.0)


def _sig(x):
  return 1.0 / (1.0 + math.exp(-x))


# Fixed sequence log-probs: policy chosen/rejected, reference chosen/rejected, lengths.
PC, PR, RC, RR, LC, LR = -3.0, -7.0, -4.0, -6.0, 2.0, 4.0


@pytest.mark.parametrize("kind,smoothing,expected", [
    ("dpo", 0.0, -math.log(_sig(0.5 * ((PC - RC) - (PR - RR))))),
    ("dpo", 0.1, -0.9 * math.log(_sig(0.5 * 2.0)) - 0.1 * math.log(_sig(-0.5 * 2.0))),
    ("ipo", 0.0, (2.0 - 1.0 / (2 * 0.5)) ** 2),
    ("simpo", 0.0, -math.log(_sig(0.5 * (PC / LC - PR / LR) - 0.3))),
])
def test_losses_equal_hand_computed_values(kind, smoothing, expected):
  loss, chosen, rejected = preference_loss(kind, *map(jnp.asarray, (PC, PR, RC, RR, LC, LR)),
                                           beta=0.5, label_smoothing=smoothing, gamma=0.3)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  if kind == "simpo":
    np.testing.assert_allclose([float(chosen), float(rejected)], [0.5 * PC / LC, 0.5 * PR / LR])
  else:
    np.testing.assert_allclose([float(chosen), float(rejected)], [0.5 * (PC - RC),
                                                                   0.5 * (PR - RR)])


def _trainer(*overrides):
  config = build_config("experiments/dpo.py:tiny", list(overrides))
  return Trainer(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))


@pytest.fixture(scope="module")
def batch():
  train_ds, _, _, _ = build_preference_datasets(ByteTokenizer(), "qa", 64, n_train_per_task=8,
                                                n_heldout_per_task=1)
  return train_ds.batch(0, 0, 8)


@pytest.fixture(scope="module")
def full():
  trainer = _trainer(("train.learning_rate", "3e-3"), ("train.warmup_steps", "0"))
  base, _ = trainer.init(0)  # as --init_from does: start from given parameters
  return trainer, *trainer.init_from(base.params, 0)


def _logps(trainer, params, batch):
  @jax.jit
  def run(params, batch):
    logits, _ = trainer.model.apply({"params": params}, pairs.stacked(batch, "inputs"))
    return pairs.sequence_logps(logits, pairs.stacked(batch, "targets"),
                                pairs.stacked(batch, "weights"))[0]
  logp = run(params, batch)
  return np.asarray(logp[:8]), np.asarray(logp[8:])


def test_dpo_is_log2_when_policy_equals_reference(full, batch):
  trainer, state, frozen = full
  loss_sum, n_pairs, metrics = trainer.eval_step(state.params, frozen, batch)
  assert float(n_pairs) == 8
  np.testing.assert_allclose(float(loss_sum) / 8, LOG2, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["reward_margin"]), 0.0, atol=1e-6)


def test_steps_push_chosen_up_rejected_down_and_the_reference_never_changes(full, batch):
  trainer, state, frozen = full
  assert "reference" in frozen
  reference = jax.tree.map(np.asarray, frozen["reference"])
  before_c, before_r = _logps(trainer, state.params, batch)
  for _ in range(3):
    state, metrics = trainer.train_step(state, frozen, batch)  # state donated
  after_c, after_r = _logps(trainer, state.params, batch)
  assert after_c.sum() > before_c.sum() and after_r.sum() < before_r.sum()
  assert np.mean(after_c - after_r > before_c - before_r) >= 0.75
  assert float(metrics["loss"]) < LOG2 and float(metrics["reward_accuracy"]) > 0.5
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, frozen["reference"]),
               reference)


def test_lora_reference_is_the_shared_base_with_lora_off(batch):
  trainer = _trainer(("peft.method", "lora"), ("peft.rank", "4"))
  state, frozen = trainer.init(0)
  assert set(frozen) == {"model"}  # no second copy of the base
  loss_sum, _, _ = trainer.eval_step(state.params, frozen, batch)
  np.testing.assert_allclose(float(loss_sum) / 8, LOG2, rtol=1e-6)  # B = 0: policy == base
  # A nonzero LoRA B moves the policy but not the reference.
  moved = jax.tree.map(lambda x: x + 0.05, state.params)
  inputs = pairs.stacked(batch, "inputs")
  ref = jax.jit(pairs.reference_logits, static_argnums=0)(trainer.model, frozen, inputs)
  base, _ = jax.jit(trainer.model.apply)({"params": trainer.full_params(state, frozen)}, inputs)
  np.testing.assert_allclose(ref, base, atol=1e-5)
  loss_moved, _, _ = trainer.eval_step(moved, frozen, batch)
  assert abs(float(loss_moved) / 8 - LOG2) > 1e-4


def test_simpo_loads_no_reference_and_ipo_starts_at_its_target(batch):
  simpo = _trainer(("rl.loss", "simpo"))
  assert not simpo.copies_reference and "reference" not in simpo.frozen_shardings
  ipo = _trainer(("rl.loss", "ipo"), ("rl.beta", "0.5"))
  state, frozen = ipo.init(0)
  loss_sum, _, _ = ipo.eval_step(state.params, frozen, batch)
  np.testing.assert_allclose(float(loss_sum) / 8, 1.0, rtol=1e-5)  # (0 - 1/(2 beta))^2
