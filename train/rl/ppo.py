"""PPO building blocks: GAE, whitening, the value-clipped critic loss, KL penalties.

Pure functions over [B, T] arrays of one rollout batch (T reply tokens, `mask_BT` 1 on real
tokens). The clipped policy objective is shared with GRPO
(train/objectives/grpo.py `clipped_surrogate`); the k3 estimator too (`k3_kl`).
"""

import dataclasses

import jax.numpy as jnp
import numpy as np


def gae(rewards_BT, values_BT, mask_BT, gamma: float = 1.0, lam: float = 0.95,
        last_values_B=None):
  """Generalised advantage estimation, backwards over time; returns (advantages, returns).

  delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1}. A sequence
  ends at its last masked token: there V_{t+1} is 0 (a terminal state: the reply ended)
  unless `last_values_B` bootstraps a truncated one. Masked-out steps get A = 0.
  Returns are A + V (the critic's regression target).
  """
  rewards_BT, values_BT, mask_BT = (np.asarray(x, np.float64) for x in
                                    (rewards_BT, values_BT, mask_BT))
  b, t = rewards_BT.shape
  bootstrap_B = np.zeros(b) if last_values_B is None else np.asarray(last_values_B, np.float64)
  advantages_BT = np.zeros((b, t))
  next_value_B, next_adv_B = bootstrap_B.copy(), np.zeros(b)
  for i in reversed(range(t)):
    m_B = mask_BT[:, i]
    delta_B = rewards_BT[:, i] + gamma * next_value_B - values_BT[:, i]
    adv_B = delta_B + gamma * lam * next_adv_B
    advantages_BT[:, i] = adv_B * m_B
    # Past the end of a sequence (mask 0) carry the bootstrap, not the padding's values.
    next_value_B = np.where(m_B > 0, values_BT[:, i], next_value_B)
    next_adv_B = np.where(m_B > 0, adv_B, next_adv_B)
  returns_BT = (advantages_BT + values_BT) * mask_BT
  return advantages_BT.astype(np.float32), returns_BT.astype(np.float32)


def whiten(x_BT, mask_BT, shift_mean: bool = True, eps: float = 1e-8):
  """(x - mean) / std over masked entries (the mean is kept when shift_mean is False)."""
  x_BT, mask_BT = np.asarray(x_BT, np.float64), np.asarray(mask_BT, np.float64)
  n = max(mask_BT.sum(), 1.0)
  mean = (x_BT * mask_BT).sum() / n
  var = (((x_BT - mean) ** 2) * mask_BT).sum() / n
  out = (x_BT - mean) / np.sqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return (out * mask_BT).astype(np.float32)


def value_loss(values_BT, old_values_BT, returns_BT, clip: float):
  """Per-token clipped critic loss: 0.5 max((V - R)^2, (clip(V, V_old +- c) - R)^2)."""
  clipped_BT = old_values_BT + jnp.clip(values_BT - old_values_BT, -clip, clip)
  return 0.5 * jnp.maximum((values_BT - returns_BT) ** 2, (clipped_BT - returns_BT) ** 2)


def k1_kl(ref_logp, logp):
  """The plain log-ratio estimator of KL(policy || reference): unbiased, can be negative."""
  return logp - ref_logp


def kl_penalised_rewards(score_B, logp_BT, ref_logp_BT, mask_BT, kl_coef: float,
                         estimator: str = "k1"):
  """Per-token rewards: -kl_coef * KL_t on every reply token, plus the sequence score on
  the last one (the InstructGPT shaping)."""
  from train.objectives.grpo import k3_kl  # pylint: disable=g-import-not-at-top
  logp_BT, ref_BT, mask_BT = (np.asarray(x, np.float32) for x in (logp_BT, ref_logp_BT, mask_BT))
  if estimator == "k1":
    kl_BT = logp_BT - ref_BT
  elif estimator == "k3":
    kl_BT = np.asarray(k3_kl(ref_BT, logp_BT))
  else:
    raise ValueError(f"unknown KL estimator {estimator!r}; use k1 or k3")
  rewards_BT = -kl_coef * kl_BT * mask_BT
  last_B = np.where(mask_BT.any(axis=1), mask_BT.shape[1] - 1 - np.argmax(mask_BT[:, ::-1], 1), 0)
  rewards_BT[np.arange(len(last_B)), last_B] += np.asarray(score_B, np.float32)
  return rewards_BT, kl_BT * mask_BT


@dataclasses.dataclass
class AdaptiveKL:
  """Ziegler et al.'s controller: raise the KL coefficient when KL exceeds the target.

  coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon; target 0 = fixed coef.
  """
  coef: float
  target: float = 0.0
  horizon: int = 10_000

  def update(self, kl: float, n_steps: int) -> float:
    if self.target > 0:
      error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
      self.coef *= 1.0 + error * n_steps / self.horizon
    return self.coef
