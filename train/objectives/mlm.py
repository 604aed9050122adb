"""Masked-LM (BERT): cross-entropy at the selected positions of a corrupted row only.

Batches come from train/data/mlm.py: inputs (corrupted), targets (original tokens),
weights (1 where selected, else 0), segment_ids (0 = padding). The encoder attends
bidirectionally inside each row's non-padding tokens. Sums over selected tokens.
"""

from model.attention import Mask
from train.objectives.common import apply_model, weighted_token_loss


def check_encoder(model, objective: str) -> None:
  arch = model.config.arch
  if arch != "encoder":
    raise ValueError(f"the {objective} objective trains an encoder-only model, but "
                     f"model.arch={arch!r}; use --config.model=encoder_tiny (or another encoder "
                     "preset, experiments/encoder.py does) or --init_from an encoder run")


def make(model, config):
  check_encoder(model, "mlm")

  def loss(params, frozen, batch, rng, train=True):
    mask = Mask.bidirectional(batch["segment_ids"])
    logits_BLV, aux = apply_model(model, params, frozen, rng, train, batch["inputs"], mask=mask)
    return weighted_token_loss(config.model, logits_BLV, aux, batch["targets"],
                               batch["weights"])
  return loss
