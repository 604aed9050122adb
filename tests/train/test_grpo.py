"""GRPO: group advantages and the clipped objective by hand, KL estimators against exact
KL, rollout log-probs equal training log-probs, padding after eos is inert, and the
reference never changes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sharding
from model.chat import get_template
from model.tokenizer import ByteTokenizer
from train.config import build_config
from train.data import tasks as tasks_lib
from train.objectives.grpo import clipped_surrogate, group_advantages, k3_kl, token_logps
from train.rl.rollout import RolloutDataset
from train.step import Trainer


def test_group_advantages_by_hand_and_flat_groups_are_zero():
  adv = group_advantages([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 3.0], 4)
  np.testing.assert_allclose(adv[:4], [1, -1, -1, 1], atol=1e-5)
  np.testing.assert_array_equal(adv[4:8], 0.0)  # all equal: no signal, no NaN
  std = np.std([0, 0, 0, 3.0])
  np.testing.assert_allclose(adv[8:], (np.array([0, 0, 0, 3.0]) - 0.75) / std, rtol=1e-5)
  assert np.all(np.isfinite(adv))


@pytest.mark.parametrize("ratio,adv,expected", [
    (1.1, 1.0, 1.1), (1.1, -1.0, -1.1),      # inside the clip: the plain ratio
    (1.5, 1.0, 1.2), (1.5, -1.0, -1.5),      # above: gains clipped, losses not
    (0.5, 1.0, 0.5), (0.5, -1.0, -0.8),      # below: the pessimistic side
])
def test_clipped_objective_inside_and_outside_the_clip(ratio, adv, expected):
  np.testing.assert_allclose(float(clipped_surrogate(jnp.float32(ratio), jnp.float32(adv), 0.2)),
                             expected, rtol=1e-6)


def test_k1_and_k3_estimators_average_to_the_exact_kl():
  rng = np.random.default_rng(0)
  for _ in range(5):
    p = rng.dirichlet(np.ones(6))
    q = rng.dirichlet(np.ones(6))
    exact = float(np.sum(p * np.log(p / q)))
    log_p, log_q = jnp.log(jnp.asarray(p)), jnp.log(jnp.asarray(q))
    k1 = float(jnp.sum(p * (log_p - log_q)))  # E_p[log p - log q]
    k3 = float(jnp.sum(p * k3_kl(log_q, log_p)))  # E_p[q/p - log(q/p) - 1]
    np.testing.assert_allclose([k1, k3], [exact, exact], rtol=1e-4)
    assert np.all(np.asarray(k3_kl(log_q, log_p)) >= 0)  # k3 is never negative


def _trainer(*overrides):
  config = build_config("experiments/grpo.py:tiny", [("train.warmup_steps", "0"),
                                                     ("train.learning_rate", "1e-2"),
                                                     *overrides])
  return Trainer(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))


@pytest.fixture(scope="module")
def setup():
  trainer = _trainer(("rl.kl_beta", "0.1"))
  state, frozen = trainer.init(0)
  rows = tasks_lib.mixture("train", 4, 0, ("arithmetic", "case"))
  data = RolloutDataset(rows, ByteTokenizer(), get_template("qa"), trainer.config.rl,
                        trainer.config.data.seq_len)
  data.set_policy(trainer, state, frozen)
  return trainer, state, frozen, data, data.batch(0, 0, 8)


def test_rollout_logprobs_equal_training_logprobs(setup):
  trainer, state, frozen, _, batch = setup
  logits, _ = jax.jit(trainer.model.apply)({"params": trainer.full_params(state, frozen)},
                                           batch["inputs"])
  logp = np.asarray(token_logps(logits, batch["targets"]))
  mask = batch["weights"] > 0
  assert mask.sum() >= 8
  np.testing.assert_allclose(logp[mask], batch["old_logp"][mask], atol=2e-4)
  # Reply weights end at eos when the sample stopped there; nothing after it is weighted.
  for row in range(8):
    last = np.flatnonzero(mask[row])[-1]
    assert not mask[row, last + 1:].any()
    if batch["targets"][row, last] != ByteTokenizer().eos_id:
      assert mask[row].sum() == trainer.config.rl.max_new_tokens


def test_batches_are_cached_per_rollout_and_grouped(setup):
  _, _, _, data, batch = setup
  again = data.batch(0, 0, 8)
  for k in batch:
    np.testing.assert_array_equal(batch[k], again[k])
  assert batch["advantages"].shape == (8, 1) and batch["rewards"].shape == (8, 1)
  prompts = batch["inputs"][:, :5]
  assert (prompts[:4] == prompts[0]).all() and (prompts[4:] == prompts[4]).all()  # G = 4
  with pytest.raises(ValueError, match="multiple of rl.group_size"):
    data.batch(0, 0, 6)


def test_padding_after_eos_carries_no_loss(setup):
  trainer, state, frozen, _, batch = setup
  batch = dict(batch, advantages=np.linspace(-1, 1, 8, dtype=np.float32).reshape(8, 1))
  noisy = {k: np.array(v) for k, v in batch.items()}
  pad = np.zeros_like(noisy["weights"], bool)
  for row in range(8):
    pad[row, np.flatnonzero(noisy["weights"][row])[-1] + 1:] = True
  rng = np.random.default_rng(0)
  noisy["inputs"][pad] = rng.integers(0, 256, pad.sum())
  noisy["targets"][pad] = rng.integers(0, 256, pad.sum())
  noisy["old_logp"][pad] = -5.0
  grad = jax.jit(jax.grad(lambda p, b: trainer.objective(p, frozen, b, jax.random.key(0))[0]))
  g1, g2 = grad(state.params, batch), grad(state.params, noisy)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g1)) > 0


def test_the_reference_never_changes_and_beta_zero_loads_none(setup):
  trainer, state, frozen, data, _ = setup
  assert "reference" in frozen
  reference = jax.tree.map(np.asarray, frozen["reference"])
  before = jax.tree.map(np.asarray, state.params)
  for step in range(2):
    data.set_policy(trainer, state, frozen)
    batch = dict(data.batch(0, step, 8))
    batch["advantages"] = np.linspace(-1, 1, 8, dtype=np.float32).reshape(8, 1)
    state, metrics = trainer.train_step(state, frozen, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["kl"]) >= 0
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before,
                         jax.tree.map(np.asarray, state.params))
  assert any(jax.tree.leaves(changed))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, frozen["reference"]),
               reference)
  assert not _trainer(("rl.kl_beta", "0")).copies_reference
