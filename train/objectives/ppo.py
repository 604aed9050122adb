"""PPO (RLHF) on rollouts from train/rl/ppo_rollout.py, with a value head on the policy.

The model is `model.reward_head.PolicyWithValue` (config head="value"). Per reply token:
  ratio = exp(logp - old_logp)
  l = -min(ratio A, clip(ratio, 1-eps, 1+eps) A) + vf_coef * 0.5 max((V-R)^2, (Vclip-R)^2)
with A, R from GAE at rollout time and Vclip the value clipped to old_value +- vf_clip.
Summed over reply tokens, weight = reply tokens (a token-level mean after the step's one
division). The KL penalty lives in the rewards (rollout), so the objective itself never
reads the reference; `needs_reference` tells the Trainer to keep one for the rollouts.
"""

import jax.numpy as jnp

from model.reward_head import PolicyWithValue
from train.objectives.common import model_params, moe_aux_sums
from train.objectives.grpo import clipped_surrogate, token_logps
from train.rl.ppo import value_loss

BATCH_KEYS = ("inputs", "targets", "weights", "old_logp", "old_values", "returns", "advantages")


def make(model, config):
  rl = config.rl
  if not isinstance(model, PolicyWithValue):
    raise ValueError("the ppo objective needs the critic: set --config.head=value "
                     "(experiments/ppo.py does)")

  def loss(params, frozen, batch, rng, train=True):
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
      raise ValueError(f"the ppo objective needs PPO rollouts (missing {missing}); use "
                       "--config.data.kind=rollout with --config.train.objective=ppo")
    del rng  # no dropout in PPO updates: the ratio must compare like with like
    weights_BL = batch["weights"].astype(jnp.float32)
    logits_BLV, values_BL, aux = model.apply({"params": model_params(params, frozen)},
                                             batch["inputs"])
    logp_BL = token_logps(logits_BLV, batch["targets"])
    ratio_BL = jnp.exp(logp_BL - batch["old_logp"])
    pg_BL = -clipped_surrogate(ratio_BL, batch["advantages"], rl.clip_eps)
    vf_BL = value_loss(values_BL, batch["old_values"], batch["returns"], rl.vf_clip)
    n_tokens = jnp.sum(weights_BL)
    total = lambda x_BL: jnp.sum(x_BL * weights_BL)
    aux_loss, aux_metrics = moe_aux_sums(config.model, aux, n_tokens)
    n_B = jnp.sum(weights_BL, axis=-1)
    metrics = {
        "ce_loss": total(-logp_BL), "policy_loss": total(pg_BL), "value_loss": total(vf_BL),
        "clip_fraction": total((jnp.abs(ratio_BL - 1.0) > rl.clip_eps).astype(jnp.float32)),
        "approx_kl_old": total(0.5 * (logp_BL - batch["old_logp"]) ** 2),
        "kl": total(batch.get("kl", jnp.zeros_like(logp_BL))),  # to the reference, per token
        "value": total(values_BL),
        # The sequence score, weighted by reply length (a token-weighted mean).
        "reward": jnp.sum(batch.get("rewards", jnp.zeros((n_B.shape[0], 1)))[:, 0] * n_B),
        **aux_metrics}
    return total(pg_BL + rl.vf_coef * vf_BL) + aux_loss, n_tokens, metrics

  loss.needs_reference = rl.kl_coef > 0
  return loss
