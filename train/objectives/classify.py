"""Sequence classification (cross-entropy) or regression (squared error) on a pooled encoder.

The model is `model.pooling_head.Classifier` (config head="classify"). Batches from
train/data/labelled.py: inputs, segment_ids (0 = padding) [B, L]; labels, label_weights
[B, 1] (weight 0 = a padding row). Sums over rows, weight = rows. Metrics: accuracy
(classification) or squared error (regression; "ce_loss" is then the squared error too).
"""

import jax
import jax.numpy as jnp

from model.pooling_head import Classifier
from train.objectives.common import apply_model, moe_aux_sums
from train.objectives.mlm import check_encoder


def make(model, config):
  if not isinstance(model, Classifier):
    raise ValueError("the classify objective needs the classification head: set "
                     "--config.head=classify (experiments/encoder.py:classify does)")
  check_encoder(model, "classify")
  regression = config.classify.task == "regression"

  def loss(params, frozen, batch, rng, train=True):
    out_BN, aux = apply_model(model, params, frozen, rng, train, batch["inputs"],
                              batch["segment_ids"])
    w_B = batch["label_weights"][:, 0].astype(jnp.float32)
    if regression:
      err_B = jnp.square(out_BN[:, 0] - batch["labels"][:, 0].astype(jnp.float32))
      loss_B, extra = err_B, {"squared_error": jnp.sum(err_B * w_B)}
    else:
      labels_B = batch["labels"][:, 0].astype(jnp.int32)
      log_p_BN = jax.nn.log_softmax(out_BN.astype(jnp.float32))
      loss_B = -jnp.take_along_axis(log_p_BN, labels_B[:, None], axis=1)[:, 0]
      correct_B = jnp.argmax(out_BN, axis=-1) == labels_B
      extra = {"accuracy": jnp.sum(correct_B * w_B)}
    n_rows = jnp.sum(w_B)
    loss_sum = jnp.sum(loss_B * w_B)
    aux_loss, aux_metrics = moe_aux_sums(config.model, aux, n_rows)
    return loss_sum + aux_loss, n_rows, {"ce_loss": loss_sum, **extra, **aux_metrics}
  return loss
