"""Next-token language modelling: cross-entropy on every target (or its given weight)."""

import jax.numpy as jnp

from train.objectives.common import forward, moe_aux_sums, token_cross_entropy


def make(model, config):
  """Loss on batch {inputs, targets, [weights], [segment_ids], [positions]}."""
  def loss(params, frozen, batch, rng, train=True):
    logits_BLV, aux = forward(model, params, frozen, batch, rng, train)
    ce_BL, correct_BL = token_cross_entropy(logits_BLV, batch["targets"])
    weights_BL = batch.get("weights")
    weights_BL = (jnp.ones_like(ce_BL) if weights_BL is None
                  else weights_BL.astype(jnp.float32))
    weight_sum = jnp.sum(weights_BL)
    ce_sum = jnp.sum(ce_BL * weights_BL)
    aux_loss, aux_metrics = moe_aux_sums(config.model, aux, weight_sum)
    metrics = {"ce_loss": ce_sum, "token_accuracy": jnp.sum(correct_BL * weights_BL),
               **aux_metrics}
    return ce_sum + aux_loss, weight_sum, metrics
  return loss
