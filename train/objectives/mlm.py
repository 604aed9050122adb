"""Masked-LM (BERT): cross-entropy at the selected positions of a corrupted row only.

Batches come from train/data/mlm.py: inputs (corrupted), targets (original tokens),
weights (1 where selected, else 0), segment_ids (0 = padding). The encoder attends
bidirectionally inside each row's non-padding tokens. Sums over selected tokens.
"""

import jax.numpy as jnp

from model.attention import Mask
from train.objectives.common import model_params, moe_aux_sums, token_cross_entropy


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
    use_dropout = train and model.peft.dropout > 0
    logits_BLV, aux = model.apply({"params": model_params(params, frozen)}, batch["inputs"],
                                  mask=mask, deterministic=not use_dropout,
                                  rngs={"dropout": rng} if use_dropout else None)
    ce_BL, correct_BL = token_cross_entropy(logits_BLV, batch["targets"])
    weights_BL = batch["weights"].astype(jnp.float32)
    weight_sum = jnp.sum(weights_BL)
    ce_sum = jnp.sum(ce_BL * weights_BL)
    aux_loss, aux_metrics = moe_aux_sums(config.model, aux, weight_sum)
    metrics = {"ce_loss": ce_sum, "token_accuracy": jnp.sum(correct_BL * weights_BL),
               **aux_metrics}
    return ce_sum + aux_loss, weight_sum, metrics
  return loss
