"""PPO rollouts: GRPO's sampling, then per-token rewards, critic values and GAE.

After sampling (train/rl/rollout.py) one jitted forward of the policy-with-critic at the
rollout-time parameters gives the values V_t and the frozen reference's log-probs; per
reply token the reward is -kl_coef * KL_t (k1 or k3 on the sampled token) plus the
sequence score (task checker or reward model) on the last token; GAE (gamma, lam) gives
advantages (whitened over the batch's reply tokens) and returns. The KL coefficient
follows `AdaptiveKL` (fixed when rl.kl_target is 0); its coefficient is checkpointed with
the rollout (`checkpoint_state`), so a resumed run continues the controller exactly. Adds
old_values, returns, kl [B, L] and per-token advantages [B, L] to the rows.
"""

import jax
import numpy as np
from absl import logging

from train.objectives import pairs
from train.objectives.grpo import token_logps
from train.rl.ppo import AdaptiveKL, gae, kl_penalised_rewards, whiten
from train.rl.rollout import RolloutDataset


class PpoRolloutDataset(RolloutDataset):

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.kl = AdaptiveKL(self.rl.kl_coef, self.rl.kl_target, self.rl.kl_horizon)
    self._forward = None

  def empty_rows(self, n: int) -> dict:
    rows = super().empty_rows(n)
    per_token = np.zeros((n, self.seq_len), np.float32)
    return dict(rows, advantages=per_token, returns=per_token.copy(),
                old_values=per_token.copy(), kl=per_token.copy())

  def checkpoint_state(self, batch_size: int) -> dict:
    return dict(super().checkpoint_state(batch_size), kl_coef=np.asarray(self.kl.coef,
                                                                         np.float64))

  def abstract_checkpoint_state(self, batch_size: int) -> dict:
    return dict(super().abstract_checkpoint_state(batch_size),
                kl_coef=np.asarray(0.0, np.float64))

  def restore_checkpoint_state(self, state: dict) -> None:
    super().restore_checkpoint_state(state)
    self.kl.coef = float(np.asarray(state["kl_coef"]))

  def _values_and_reference(self, inputs_BL, targets_BL):
    if self._forward is None:
      model = self.trainer.model

      def forward(params, frozen, inputs_BL, targets_BL):
        _, values_BL, _ = model.apply({"params": params}, inputs_BL)
        if self.rl.kl_coef > 0:
          ref_BL = token_logps(pairs.reference_logits(model, frozen, inputs_BL), targets_BL)
        else:
          ref_BL = values_BL * 0
        return values_BL, ref_BL
      self._forward = jax.jit(forward)
    params = self.trainer.model_params(self.state, self.frozen)
    values_BL, ref_BL = self._forward(params, self.frozen, inputs_BL, targets_BL)
    return np.asarray(values_BL, np.float32), np.asarray(ref_BL, np.float32)

  def add_advantages(self, batch: dict, rewards: np.ndarray) -> dict:
    mask_BL = batch["weights"]
    values_BL, ref_BL = self._values_and_reference(batch["inputs"], batch["targets"])
    if self.rl.kl_coef > 0:
      token_rewards_BL, kl_BL = kl_penalised_rewards(
          rewards, batch["old_logp"], ref_BL, mask_BL, self.kl.coef, self.rl.kl_estimator)
    else:
      token_rewards_BL, kl_BL = kl_penalised_rewards(rewards, batch["old_logp"],
                                                     batch["old_logp"], mask_BL, 0.0)
    advantages_BL, returns_BL = gae(token_rewards_BL, values_BL * mask_BL, mask_BL,
                                    self.rl.gamma, self.rl.lam)
    if self.rl.whiten_advantages:
      advantages_BL = whiten(advantages_BL, mask_BL)
    kl_per_sequence = float(kl_BL.sum() / max(len(rewards), 1))
    coef = self.kl.coef
    self.kl.update(kl_per_sequence, len(rewards))
    self.last_stats.update(kl=kl_per_sequence, kl_coef=coef)
    logging.info("ppo rollout: score %.3f, KL to reference %.4f per reply (coef %.4f), %.1f "
                 "reply tokens", float(np.mean(rewards)), kl_per_sequence, coef,
                 self.last_stats["reply_tokens"])
    return dict(batch, advantages=advantages_BL, returns=returns_BL,
                old_values=values_BL * mask_BL, kl=kl_BL.astype(np.float32))
