"""PPO pieces: GAE against hand-computed trajectories (terminal, bootstrapped, padded),
whitening, the value-clipped loss, KL-shaped rewards and the adaptive KL controller.
(The clipped policy objective and the k1/k3 estimators vs exact KL: tests/train/test_grpo.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sharding
from model.chat import get_template
from model.tokenizer import ByteTokenizer
from train.config import build_config
from train.data import tasks as tasks_lib
from train.rl.ppo import AdaptiveKL, gae, kl_penalised_rewards, value_loss, whiten
from train.rl.ppo_rollout import PpoRolloutDataset
from train.step import Trainer

R = [[1.0, 0.0, 2.0]]
V = [[0.5, 1.0, 1.5]]


def _by_hand(gamma, lam, last_value):
  # delta_t = r_t + gamma V_{t+1} - V_t with V_3 = last_value
  d2 = 2.0 + gamma * last_value - 1.5
  d1 = 0.0 + gamma * 1.5 - 1.0
  d0 = 1.0 + gamma * 1.0 - 0.5
  a2 = d2
  a1 = d1 + gamma * lam * a2
  a0 = d0 + gamma * lam * a1
  return np.array([[a0, a1, a2]])


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_gae_terminal_trajectory_by_hand(gamma, lam):
  adv, ret = gae(R, V, [[1, 1, 1]], gamma, lam)
  np.testing.assert_allclose(adv, _by_hand(gamma, lam, 0.0), rtol=1e-6)
  np.testing.assert_allclose(ret, _by_hand(gamma, lam, 0.0) + np.array(V), rtol=1e-6)


def test_gae_bootstraps_a_truncated_trajectory():
  adv, _ = gae(R, V, [[1, 1, 1]], 0.9, 0.8, last_values_B=[3.0])
  np.testing.assert_allclose(adv, _by_hand(0.9, 0.8, 3.0), rtol=1e-6)


def test_gae_ignores_padding_after_the_end():
  padded_adv, padded_ret = gae([[1.0, 0.0, 2.0, 9.0, 9.0]], [[0.5, 1.0, 1.5, 7.0, 7.0]],
                               [[1, 1, 1, 0, 0]], 0.9, 0.8)
  adv, ret = gae(R, V, [[1, 1, 1]], 0.9, 0.8)
  np.testing.assert_allclose(padded_adv[:, :3], adv, rtol=1e-6)
  np.testing.assert_array_equal(padded_adv[:, 3:], 0.0)
  np.testing.assert_array_equal(padded_ret[:, 3:], 0.0)


def test_whitening_uses_only_masked_entries():
  x = np.array([[1.0, 2.0, 3.0, 100.0]])
  out = whiten(x, [[1, 1, 1, 0]])
  np.testing.assert_allclose(out[0, :3], (np.array([1, 2, 3]) - 2) / np.std([1, 2, 3]),
                             rtol=1e-5)
  assert out[0, 3] == 0.0
  kept = whiten(x, [[1, 1, 1, 0]], shift_mean=False)
  np.testing.assert_allclose(kept[0, :3].mean(), 2.0, rtol=1e-5)


def test_value_loss_clips_moves_away_from_the_old_value():
  old, ret = jnp.float32(1.0), jnp.float32(3.0)
  # Inside the clip: the plain squared error.
  np.testing.assert_allclose(value_loss(jnp.float32(1.1), old, ret, 0.2), 0.5 * 1.9 ** 2,
                             rtol=1e-6)
  # A big step toward the return is capped at old + clip (the larger loss wins).
  np.testing.assert_allclose(value_loss(jnp.float32(2.5), old, ret, 0.2), 0.5 * 1.8 ** 2,
                             rtol=1e-6)
  # A step away from the return is not rewarded by clipping.
  np.testing.assert_allclose(value_loss(jnp.float32(0.0), old, ret, 0.2), 0.5 * 3.0 ** 2,
                             rtol=1e-6)


def test_kl_shaped_rewards_put_the_score_on_the_last_reply_token():
  logp = [[-1.0, -2.0, -1.0, 0.0]]
  ref = [[-1.5, -1.0, -1.0, 0.0]]
  rewards, kl = kl_penalised_rewards([5.0], logp, ref, [[1, 1, 1, 0]], kl_coef=0.1)
  np.testing.assert_allclose(kl, [[0.5, -1.0, 0.0, 0.0]])
  np.testing.assert_allclose(rewards, [[-0.05, 0.1, 5.0, 0.0]], rtol=1e-6)
  _, kl3 = kl_penalised_rewards([5.0], logp, ref, [[1, 1, 1, 0]], 0.1, estimator="k3")
  assert np.all(kl3 >= 0)


def test_adaptive_kl_controller_moves_toward_the_target():
  ctl = AdaptiveKL(coef=0.1, target=1.0, horizon=100)
  assert ctl.update(kl=5.0, n_steps=10) == pytest.approx(0.1 * 1.02)
  assert AdaptiveKL(0.1, target=1.0, horizon=100).update(0.5, 10) == pytest.approx(0.1 * 0.98)
  assert AdaptiveKL(0.1).update(5.0, 10) == 0.1  # target 0: fixed coefficient


def test_ppo_rollouts_train_the_critic_which_stays_out_of_the_saved_policy():
  config = build_config("experiments/ppo.py:tiny", [
      ("rl.reward", "task"), ("train.warmup_steps", "0"), ("rl.updates_per_rollout", "2"),
      ("rl.minibatches", "2"), ("train.batch_size", "4")])
  trainer = Trainer(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))
  state, frozen = trainer.init(0)
  assert "reference" in frozen and "value_head" in state.params
  data = PpoRolloutDataset(tasks_lib.mixture("train", 4, 0, ("arithmetic", "case")),
                           ByteTokenizer(), get_template("qa"), config.rl, config.data.seq_len)
  data.set_policy(trainer, state, frozen)
  batches = [data.batch(0, step, 4) for step in range(4)]  # 2 epochs x 2 minibatches
  first = np.concatenate([b["inputs"] for b in batches[:2]])
  second = np.concatenate([b["inputs"] for b in batches[2:]])
  assert sorted(map(bytes, first)) == sorted(map(bytes, second))  # same rollout, reshuffled
  batch = batches[0]
  mask = batch["weights"] > 0
  assert np.all(batch["advantages"][~mask] == 0) and np.all(np.isfinite(batch["returns"]))
  np.testing.assert_allclose(batch["advantages"][mask].mean(), 0.0, atol=0.5)  # whitened
  critic = np.asarray(state.params["value_head"]["kernel"]).copy()
  state, metrics = trainer.train_step(state, frozen, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["value_loss"]) >= 0
  assert not np.array_equal(critic, np.asarray(state.params["value_head"]["kernel"]))
  assert "value_head" not in trainer.full_params(state, frozen)  # the policy decodes alone
  assert "value_head" in trainer.train_state_item(state)["critic"]
