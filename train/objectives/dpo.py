"""Direct preference optimisation and its family: DPO, IPO, SimPO (--config.rl.loss).

With sequence log-probs (sums over reply tokens) of the policy (pc, pr: chosen, rejected)
and of the frozen reference (rc, rr), and h = (pc - rc) - (pr - rr):
  dpo    -(1-s) log sig(beta h) - s log sig(-beta h)       s = label_smoothing (cDPO)
  ipo    (h - 1/(2 beta))^2                                 (Azar et al., on sequence sums)
  simpo  -(1-s) log sig(beta (pc/|yc| - pr/|yr|) - gamma) - s log sig(-(...))   no reference
Implicit rewards: beta (pc - rc) and beta (pr - rr) (SimPO: beta pc/|yc|, beta pr/|yr|).
Every quantity is summed over pairs and the weight is the number of pairs, so the step's
one division gives per-pair means for the loss and every metric, however the batch is
accumulated (no averaging of averages).
"""

import jax
import jax.numpy as jnp

from train.objectives import pairs
from train.objectives.common import moe_aux_sums


def preference_loss(kind: str, pc, pr, rc, rr, lc, lr, beta: float,
                    label_smoothing: float = 0.0, gamma: float = 0.5):
  """Per-pair (loss_B, chosen_reward_B, rejected_reward_B) from sequence log-probs.

  lc, lr: reply lengths in tokens (SimPO normalises by them); rc, rr are ignored by SimPO.
  """
  s = label_smoothing
  if kind == "simpo":
    chosen, rejected = beta * pc / jnp.maximum(lc, 1.0), beta * pr / jnp.maximum(lr, 1.0)
    logits = chosen - rejected - gamma
    loss = -(1 - s) * jax.nn.log_sigmoid(logits) - s * jax.nn.log_sigmoid(-logits)
    return loss, chosen, rejected
  chosen, rejected = beta * (pc - rc), beta * (pr - rr)
  h = (pc - rc) - (pr - rr)
  if kind == "dpo":
    logits = beta * h
    loss = -(1 - s) * jax.nn.log_sigmoid(logits) - s * jax.nn.log_sigmoid(-logits)
  elif kind == "ipo":
    loss = (h - 1.0 / (2.0 * beta)) ** 2
  else:
    raise ValueError(f"unknown preference loss {kind!r}; use --config.rl.loss=dpo|ipo|simpo")
  return loss, chosen, rejected


def make(model, config):
  rl = config.rl
  if rl.beta <= 0:
    raise ValueError(f"rl.beta={rl.beta} must be > 0; set --config.rl.beta")

  def loss(params, frozen, batch, rng, train=True):
    inputs_2BL = pairs.stacked(batch, "inputs")
    targets_2BL = pairs.stacked(batch, "targets")
    weights_2BL = pairs.stacked(batch, "weights").astype(jnp.float32)
    b = inputs_2BL.shape[0] // 2
    logits_2BLV, aux = pairs.policy_logits(model, params, frozen, inputs_2BL, rng, train)
    logp_2B, n_2B = pairs.sequence_logps(logits_2BLV, targets_2BL, weights_2BL)
    if loss.needs_reference:
      ref_logits = pairs.reference_logits(model, frozen, inputs_2BL)
      ref_2B, _ = pairs.sequence_logps(ref_logits, targets_2BL, weights_2BL)
    else:
      ref_2B = jnp.zeros_like(logp_2B)
    valid_B = pairs.valid_pairs(weights_2BL)
    loss_B, chosen_B, rejected_B = preference_loss(
        rl.loss, logp_2B[:b], logp_2B[b:], ref_2B[:b], ref_2B[b:], n_2B[:b], n_2B[b:],
        rl.beta, rl.label_smoothing, rl.simpo_gamma)
    n_pairs = jnp.sum(valid_B)
    total = lambda x_B: jnp.sum(x_B * valid_B)
    aux_loss, aux_metrics = moe_aux_sums(config.model, aux, n_pairs)
    metrics = {
        "preference_loss": total(loss_B),
        "reward_accuracy": total((chosen_B > rejected_B).astype(jnp.float32)),
        "chosen_reward": total(chosen_B), "rejected_reward": total(rejected_B),
        "reward_margin": total(chosen_B - rejected_B),
        "logp_chosen": total(logp_2B[:b]), "logp_rejected": total(logp_2B[b:]),
        # Per-token NLL of the chosen reply (mean over pairs): perplexity in the log.
        "ce_loss": total(-logp_2B[:b] / jnp.maximum(n_2B[:b], 1.0)),
        **aux_metrics}
    return total(loss_B) + aux_loss, n_pairs, metrics

  loss.needs_reference = rl.loss != "simpo"
  return loss
