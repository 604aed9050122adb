"""AdamW with linear warmup, cosine decay to a floor, clipping and a weight-decay mask."""

import jax
import optax

from train.config import TrainConfig

# Path fragments of leaves that never decay: embeddings, position tables, norm scales, biases
# (scanned layers stack these, so their rank alone does not tell them apart).
_NO_DECAY_NAME_PARTS = ("embed", "pos_", "position", "norm", "scale", "bias")



def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
  """0 -> peak linearly over warmup_steps, then cosine to lr_floor * peak at `steps`."""
  warmup = max(0, min(config.warmup_steps, config.steps - 1))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
      decay_steps=max(config.steps, warmup + 1),
      end_value=config.learning_rate * config.lr_floor)


def weight_decay_mask(params, decay_norms_and_embeddings: bool = False):
  """True for leaves that get weight decay: weight matrices, not embeddings/norms/biases."""
  def decays(path, leaf):
    if decay_norms_and_embeddings:
      return True
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path).lower()
    if leaf.ndim < 2:
      return False
    return not any(part in name for part in _NO_DECAY_NAME_PARTS)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(config)
  parts = []
  if config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip))
  parts.append(optax.adamw(
      schedule, b1=config.beta1, b2=config.beta2, weight_decay=config.weight_decay,
      mask=lambda p: weight_decay_mask(p, config.decay_norms_and_embeddings)))
  return optax.chain(*parts)
