"""Next-token language modelling: cross-entropy on every target (or its given weight)."""

from train.objectives.common import forward, weighted_token_loss


def make(model, config):
  """Loss on batch {inputs, targets, [weights], [segment_ids], [positions]}."""
  def loss(params, frozen, batch, rng, train=True):
    logits_BLV, aux = forward(model, params, frozen, batch, rng, train)
    return weighted_token_loss(config.model, logits_BLV, aux, batch["targets"],
                               batch.get("weights"))
  return loss
