"""Reward model: Bradley-Terry loss on preference pairs, -log sig(r_chosen - r_rejected - m).

The model is `model.reward_head.RewardModel` (config head="reward"): the transformer's final
hidden state at the reply's last token, projected to a scalar. m is rl.reward_margin plus
the pair's own "margin" (Llama-2 style; 0 without one). Sums over pairs, weight = pairs.
Metrics: pairwise accuracy (r_chosen > r_rejected), mean chosen / rejected reward, margin.
"""

import jax
import jax.numpy as jnp

from model.reward_head import RewardModel, last_index
from train.objectives import pairs
from train.objectives.common import apply_model, moe_aux_sums


def bradley_terry(chosen_B, rejected_B, margin_B=0.0):
  """Per-pair BT loss and whether the pair is ranked right."""
  loss_B = -jax.nn.log_sigmoid(chosen_B - rejected_B - margin_B)
  return loss_B, (chosen_B > rejected_B).astype(jnp.float32)


def make(model, config):
  if not isinstance(model, RewardModel):
    raise ValueError("the reward objective needs the reward head: set --config.head=reward "
                     "(experiments/reward.py does)")

  def loss(params, frozen, batch, rng, train=True):
    inputs_2BL = pairs.stacked(batch, "inputs")
    weights_2BL = pairs.stacked(batch, "weights").astype(jnp.float32)
    b = inputs_2BL.shape[0] // 2
    rewards_2B, aux = apply_model(model, params, frozen, rng, train, inputs_2BL,
                                  last_index(weights_2BL))
    margin_B = config.rl.reward_margin + batch.get("margin", jnp.zeros((b, 1)))[:, 0]
    loss_B, correct_B = bradley_terry(rewards_2B[:b], rewards_2B[b:], margin_B)
    valid_B = pairs.valid_pairs(weights_2BL)
    n_pairs = jnp.sum(valid_B)
    total = lambda x_B: jnp.sum(x_B * valid_B)
    aux_loss, aux_metrics = moe_aux_sums(config.model, aux, n_pairs)
    metrics = {"ce_loss": total(loss_B), "reward_accuracy": total(correct_B),
               "chosen_reward": total(rewards_2B[:b]), "rejected_reward": total(rewards_2B[b:]),
               "reward_margin": total(rewards_2B[:b] - rewards_2B[b:]), **aux_metrics}
    return total(loss_B) + aux_loss, n_pairs, metrics
  return loss
