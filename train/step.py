"""The jitted train and eval steps, and sharded train-state creation.

`Trainer(config, mesh)` owns the model, optimizer and the three jitted programs:
`init(rng) -> state`, `train_step(state, batch) -> (state, metrics)` (state donated),
`eval_step(params, batch) -> (loss_sum, token_count)`. Shardings come from the logical
axis names on the parameters through `model.sharding`.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from model import sharding
from model.transformer import Transformer
from train.config import Config
from train.optimizer import learning_rate_schedule, make_optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def cross_entropy(logits_BLV: jax.Array, targets_BL: jax.Array,
                  weights_BL: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Sum of float32 token cross-entropies and the number of counted tokens."""
  logits_BLV = logits_BLV.astype(jnp.float32)
  log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  loss_BL = log_z_BL - target_logit_BL
  if weights_BL is None:
    weights_BL = jnp.ones_like(loss_BL)
  weights_BL = weights_BL.astype(jnp.float32)
  return jnp.sum(loss_BL * weights_BL), jnp.sum(weights_BL)


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _tree_where(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class Trainer:
  """Model + optimizer + jitted init/train/eval programs for one config and mesh."""

  def __init__(self, config: Config, mesh: jax.sharding.Mesh):
    self.config = config
    self.mesh = mesh
    self.model = Transformer(config.model)
    self.optimizer = make_optimizer(config.train)
    self.schedule = learning_rate_schedule(config.train)
    with sharding.use_mesh(mesh):
      abstract_boxed = jax.eval_shape(self._init_boxed, jax.random.key(0))
    self.state_shardings = sharding.tree_shardings(abstract_boxed, mesh)
    self.abstract_state = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        nn.unbox(abstract_boxed), self.state_shardings)
    self.batch_sharding = sharding.batch_sharding(mesh, 2)
    replicated = sharding.replicated(mesh)
    self._init = jax.jit(lambda rng: nn.unbox(self._init_boxed(rng)),
                         out_shardings=self.state_shardings)
    self._train_step = jax.jit(
        self._train_step_fn,
        in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, replicated),
        donate_argnums=(0,))
    self._eval_step = jax.jit(
        self._eval_step_fn,
        in_shardings=(self.state_shardings.params, self.batch_sharding),
        out_shardings=(replicated, replicated))

  def check_batch_size(self):
    """The global batch must split evenly over batch mesh axes and accumulation steps."""
    train = self.config.train
    divisor = sharding.batch_divisor(self.mesh) * train.grad_accum
    if train.batch_size % divisor:
      raise ValueError(
          f"train.batch_size={train.batch_size} must be a multiple of (data*fsdp*expert mesh "
          f"axes) * grad_accum = {divisor}; change --config.train.batch_size or the mesh")

  # -- programs ---------------------------------------------------------------------------

  def _init_boxed(self, rng):
    seq_len = self.config.data.seq_len
    tokens_BL = jnp.zeros((1, seq_len), jnp.int32)
    params = self.model.init(rng, tokens_BL)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params))

  def loss_fn(self, params, batch):
    """Mean token cross-entropy plus weighted MoE auxiliary losses; returns (loss, metrics)."""
    logits_BLV, aux = self.model.apply({"params": params}, batch["inputs"])
    loss_sum, n_tokens = cross_entropy(logits_BLV, batch["targets"], batch.get("weights"))
    ce = loss_sum / jnp.maximum(n_tokens, 1.0)
    model_config = self.config.model
    total = ce
    metrics = {"ce_loss": ce}
    if aux:
      total = (total + model_config.load_balance_weight * aux["load_balance_loss"]
               + model_config.router_z_loss_weight * aux["router_z_loss"])
      metrics.update({f"moe_{k}": v for k, v in aux.items()})
    return total, metrics

  def _train_step_fn(self, state: TrainState, batch):
    accum = self.config.train.grad_accum
    grad_fn = jax.value_and_grad(self.loss_fn, has_aux=True)
    if accum == 1:
      (loss, metrics), grads = grad_fn(state.params, batch)
    else:
      micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

      def accumulate(carry, micro_batch):
        return jax.tree.map(jnp.add, carry, grad_fn(state.params, micro_batch)), None

      shapes = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      ((loss, metrics), grads), _ = jax.lax.scan(accumulate, zeros, micro)
      loss, metrics, grads = jax.tree.map(lambda x: x / accum, (loss, metrics, grads))
    updates, new_opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss)
    new_state = TrainState(
        step=state.step + 1,
        params=_tree_where(finite, new_params, state.params),
        opt_state=_tree_where(finite, new_opt_state, state.opt_state))
    metrics = dict(metrics, loss=loss, grad_norm=_global_norm(grads),
                   learning_rate=self.schedule(state.step), finite=finite)
    return new_state, metrics

  def _eval_step_fn(self, params, batch):
    logits_BLV, _ = self.model.apply({"params": params}, batch["inputs"])
    return cross_entropy(logits_BLV, batch["targets"], batch.get("weights"))

  # -- public API ---------------------------------------------------------------------------

  def init(self, seed: int) -> TrainState:
    with sharding.use_mesh(self.mesh):
      return self._init(jax.random.key(seed))

  def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    with sharding.use_mesh(self.mesh):
      return self._train_step(state, batch)

  def eval_step(self, params, batch):
    with sharding.use_mesh(self.mesh):
      return self._eval_step(params, batch)

  def global_batch(self, local_batch: dict, global_rows: int | None = None) -> dict:
    """Assembles this process's rows into global arrays sharded over the batch axes."""
    global_rows = global_rows or self.config.train.batch_size
    return {
        key: jax.make_array_from_process_local_data(
            self.batch_sharding, value, (global_rows, *value.shape[1:]))
        for key, value in local_batch.items()}
