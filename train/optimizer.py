"""AdamW with linear warmup, cosine decay to a floor, clipping and a weight-decay mask."""

import jax
import optax

from train.config import TrainConfig

# Weight decay is chosen by a parameter's role, read from its own (last) name: projection
# weights decay; embeddings, position tables, norm scales, biases and the soft prompt do
# not. (Matching fragments of the whole path is how `unembed/kernel` once escaped decay.)
DECAYED_NAMES = ("kernel", "router_kernel", "lora_a", "lora_b")


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
    del leaf
    if decay_norms_and_embeddings:
      return True
    name = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1]))) if path else ""
    return name in DECAYED_NAMES
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
