"""Pieces every objective shares: running the model on a batch, token cross-entropy."""

import jax
import jax.numpy as jnp

from model.attention import Mask
from model.peft import combine


def model_params(params, frozen):
  """The full parameter tree: trainable leaves and the frozen rest of the model."""
  frozen_model = frozen.get("model") if frozen else None
  return combine(params, frozen_model) if frozen_model else params


def forward(model, params, frozen, batch, rng, train: bool):
  """Logits and MoE aux of the model on batch["inputs"] (packed rows use segment ids).

  Prompt tuning runs unpacked rows (one example each, padding at the end), where the
  causal mask alone is exact; the model places the soft prompt and the positions.
  """
  segment_ids = batch.get("segment_ids")
  positions = batch.get("positions")
  if model.peft.method == "prompt_tuning":
    segment_ids = positions = None
  mask = Mask.packed(segment_ids) if segment_ids is not None else None
  return apply_model(model, params, frozen, rng, train, batch["inputs"],
                     positions_BL=positions, mask=mask)


def apply_model(model, params, frozen, rng, train: bool, *args, **kwargs):
  """`model.apply` on the full tree, with (LoRA) dropout only when training asks for it."""
  use_dropout = train and model.peft.dropout > 0
  return model.apply({"params": model_params(params, frozen)}, *args,
                     deterministic=not use_dropout,
                     rngs={"dropout": rng} if use_dropout else None, **kwargs)


def token_cross_entropy(logits_BLV, targets_BL):
  """Per-token float32 cross-entropy and whether the target has the largest logit.

  The max that stabilises logsumexp also gives the accuracy (target logit >= max), so the
  [B, L, V] logits are not read again by an argmax (~4% of a CPU train step). A target tied
  with another token for the max counts as correct (argmax would pick the lower id).
  """
  logits_BLV = logits_BLV.astype(jnp.float32)
  max_BL = jax.lax.stop_gradient(jnp.max(logits_BLV, axis=-1))
  log_z_BL = max_BL + jnp.log(jnp.sum(jnp.exp(logits_BLV - max_BL[..., None]), axis=-1))
  target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  correct_BL = target_logit_BL >= max_BL
  return log_z_BL - target_logit_BL, correct_BL


def weighted_token_loss(model_config, logits_BLV, aux, targets_BL, weights_BL):
  """(loss_sum, weight_sum, metric_sums) of cross-entropy weighted per token, plus MoE aux."""
  ce_BL, correct_BL = token_cross_entropy(logits_BLV, targets_BL)
  weights_BL = (jnp.ones_like(ce_BL) if weights_BL is None
                else weights_BL.astype(jnp.float32))
  weight_sum = jnp.sum(weights_BL)
  ce_sum = jnp.sum(ce_BL * weights_BL)
  aux_loss, aux_metrics = moe_aux_sums(model_config, aux, weight_sum)
  metrics = {"ce_loss": ce_sum, "token_accuracy": jnp.sum(correct_BL * weights_BL),
             **aux_metrics}
  return ce_sum + aux_loss, weight_sum, metrics


def moe_aux_sums(model_config, aux, weight_sum):
  """MoE auxiliary losses scaled by the batch weight, so dividing by the total weight
  gives their weight-averaged value, and their metric sums."""
  if not aux:
    return 0.0, {}
  loss = (model_config.load_balance_weight * aux["load_balance_loss"]
          + model_config.router_z_loss_weight * aux["router_z_loss"])
  return loss * weight_sum, {f"moe_{k}": v * weight_sum for k, v in aux.items()}
