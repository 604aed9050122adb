"""GRPO: group-relative policy optimisation on rollouts (train/rl/rollout.py).

A rollout batch holds G samples per prompt: `inputs`, `targets`, `weights` (1 on the
sampled reply tokens up to and including eos, 0 on the prompt and on padding after eos),
`old_logp` (the sampler's log-prob of each target token under the policy that drew it),
`advantages` ([B, 1], group-relative, `group_advantages`) and optionally `rewards` [B, 1]. Per reply token t of sample i:
  ratio = exp(logp - old_logp),  l = -min(ratio A_i, clip(ratio, 1-eps, 1+eps) A_i)
          + kl_beta * k3(ref, logp),   k3 = exp(ref - logp) - (ref - logp) - 1
Loss of a sample = mean of l over its reply tokens; summed over samples with weight = the
number of samples (the step divides once), as in the GRPO paper. kl_beta = 0 loads no
reference at all.
"""

import jax.numpy as jnp
import numpy as np

from train.objectives import pairs
from train.objectives.common import moe_aux_sums, token_cross_entropy


def group_advantages(rewards, group_size: int, eps: float = 1e-6) -> np.ndarray:
  """(r - mean_group) / (std_group + eps), groups of `group_size` consecutive samples.

  A group whose rewards are all equal gets advantage 0 (never NaN): it carries no signal.
  """
  r_NG = np.asarray(rewards, np.float64).reshape(-1, group_size)
  centred_NG = r_NG - r_NG.mean(axis=1, keepdims=True)
  std_N1 = r_NG.std(axis=1, keepdims=True)
  return np.where(std_N1 > 0, centred_NG / (std_N1 + eps), 0.0).reshape(-1).astype(np.float32)


def clipped_surrogate(ratio, advantages, clip_eps: float):
  """PPO/GRPO per-token objective to MAXIMISE: min(r A, clip(r, 1-eps, 1+eps) A)."""
  return jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)


def k3_kl(ref_logp, logp):
  """Schulman's unbiased, non-negative estimator of KL(policy || reference) per token."""
  log_ratio = ref_logp - logp
  return jnp.exp(log_ratio) - log_ratio - 1.0


def token_logps(logits_BLV, targets_BL):
  ce_BL, _ = token_cross_entropy(logits_BLV, targets_BL)
  return -ce_BL


def make(model, config):
  rl = config.rl

  def loss(params, frozen, batch, rng, train=True):
    for key in ("old_logp", "advantages"):
      if key not in batch:
        raise ValueError(f"the grpo objective needs rollouts (batch['{key}']); use "
                         "--config.data.kind=rollout (experiments/grpo.py)")
    weights_BL = batch["weights"].astype(jnp.float32)
    # No dropout: the ratio must compare the policy with the sampler like for like.
    logits_BLV, aux = pairs.policy_logits(model, params, frozen, batch["inputs"], rng, False)
    logp_BL = token_logps(logits_BLV, batch["targets"])
    ratio_BL = jnp.exp(logp_BL - batch["old_logp"])
    adv_B1 = batch["advantages"].astype(jnp.float32).reshape(-1, 1)
    per_token_BL = -clipped_surrogate(ratio_BL, adv_B1, rl.clip_eps)
    kl_BL = jnp.zeros_like(logp_BL)
    if loss.needs_reference:
      ref_BL = token_logps(pairs.reference_logits(model, frozen, batch["inputs"]),
                           batch["targets"])
      kl_BL = k3_kl(ref_BL, logp_BL)
      per_token_BL = per_token_BL + rl.kl_beta * kl_BL
    n_B = jnp.sum(weights_BL, axis=-1)
    valid_B = (n_B > 0).astype(jnp.float32)
    seq_mean = lambda x_BL: jnp.sum(x_BL * weights_BL, axis=-1) / jnp.maximum(n_B, 1.0)
    n_samples = jnp.sum(valid_B)
    clipped_BL = (jnp.abs(ratio_BL - 1.0) > rl.clip_eps).astype(jnp.float32)
    aux_loss, aux_metrics = moe_aux_sums(config.model, aux, n_samples)
    metrics = {"ce_loss": jnp.sum(seq_mean(-logp_BL)), "kl": jnp.sum(seq_mean(kl_BL)),
               "clip_fraction": jnp.sum(seq_mean(clipped_BL)),
               "ratio": jnp.sum(seq_mean(ratio_BL)),
               "reward": jnp.sum(batch.get("rewards", jnp.zeros_like(n_B)).reshape(-1) * valid_B),
               "reply_tokens": jnp.sum(n_B), **aux_metrics}
    return jnp.sum(seq_mean(per_token_BL)) + aux_loss, n_samples, metrics

  loss.needs_reference = rl.kl_beta > 0
  return loss
