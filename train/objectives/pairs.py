"""What the preference objectives (dpo, reward) share: stacking a pair batch, sequence
log-probs of the policy and of its frozen reference.

A pair batch (train/data/preference.py) holds `chosen_*` and `rejected_*` rows; they run as
one forward pass of 2B rows (chosen first). A sequence log-prob is the SUM of the target
log-probs over the reply's tokens (weight 1: the reply and its closing eos).
"""

import jax
import jax.numpy as jnp

from model.peft import PeftConfig
from model.transformer import Transformer
from train.objectives.common import apply_model, token_cross_entropy


def stacked(batch, key: str):
  """chosen_<key> and rejected_<key> stacked: [2B, ...], chosen rows first."""
  if f"chosen_{key}" not in batch:
    raise ValueError(f"this objective needs preference pairs (batch['chosen_{key}']); use "
                     "--config.data.kind=preference data")
  return jnp.concatenate([batch[f"chosen_{key}"], batch[f"rejected_{key}"]], axis=0)


def valid_pairs(weights_2BL):
  """1.0 for pairs whose chosen and rejected replies both have target tokens (not padding)."""
  has_2B = (jnp.sum(weights_2BL, axis=-1) > 0).astype(jnp.float32)
  b = has_2B.shape[0] // 2
  return has_2B[:b] * has_2B[b:]


def sequence_logps(logits_BLV, targets_BL, weights_BL):
  """(sum of reply-token log-probs [B], reply tokens [B], token NLL sum [B])."""
  ce_BL, _ = token_cross_entropy(logits_BLV, targets_BL)
  weights_BL = weights_BL.astype(jnp.float32)
  logp_B = -jnp.sum(ce_BL * weights_BL, axis=-1)
  return logp_B, jnp.sum(weights_BL, axis=-1)


def policy_logits(model, params, frozen, inputs_BL, rng, train: bool):
  """Logits of the trained policy (trainable + frozen model trees), LoRA dropout in train."""
  out = apply_model(model, params, frozen, rng, train, inputs_BL)
  return out[0], out[-1]  # PolicyWithValue returns (logits, values, aux)


def reference_logits(model, frozen, inputs_BL):
  """Logits of the frozen reference, with no gradient.

  A full fine-tune keeps a copy of its starting parameters in frozen["reference"]; a PEFT
  policy's reference is the same base with the PEFT additions off, i.e. the plain
  transformer on frozen["model"], which is shared, not copied.
  """
  quant = {"quant": model.quant} if hasattr(model, "quant") else {}
  base = Transformer(model.config, PeftConfig(), **quant)  # no PEFT additions, no heads
  if "reference" in frozen:
    logits_BLV, _ = base.apply({"params": frozen["reference"]}, inputs_BL)
  elif model.peft.method != "full" and "model" in frozen:
    logits_BLV, _ = base.apply({"params": frozen["model"]}, inputs_BL)
  else:
    raise ValueError("the objective needs a reference model but frozen has none; build the "
                     "run through train.step.Trainer (it keeps the reference)")
  return jax.lax.stop_gradient(logits_BLV)
