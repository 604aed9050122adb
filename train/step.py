"""The jitted train and eval steps over trainable and frozen parameter trees.

`Trainer(config, mesh)` owns the model, the objective (train/objectives/), the optimizer
and three jitted programs:
  init(seed) / init_from(base_params, seed) -> (state, frozen)
  train_step(state, frozen, batch) -> (state, metrics)      state donated
  eval_step(params, frozen, batch) -> (loss_sum, weight_sum, metric_sums)
`state.params` is the trainable tree (all parameters for full fine-tuning, LoRA factors,
adapters or the soft prompt otherwise) and the only one with optimizer state and
gradients; `frozen["model"]` holds the rest of the model (QLoRA: quantized, model/quant.py)
and an objective may add frozen trees of its own through `loss.load_frozen(mesh)` (the
distillation teacher, `frozen["teacher"]`). Shardings come from the logical axis names on
the parameters through `model.sharding`.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from model import peft, quant, sharding
from model.peft import PeftConfig
from model.pooling_head import CLASSIFY_PARAMS, Classifier
from model.reward_head import CRITIC_PARAMS, HEAD_PARAMS, PolicyWithValue, RewardModel
from model.encoder_decoder import init_params, make_model
from train.config import Config
from train.objectives import make_objective
from train.optimizer import learning_rate_schedule, make_optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # the trainable tree
  opt_state: Any


def _global_norm(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros(())
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def _tree_where(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _abstract(boxed_tree, shardings):
  return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                      nn.unbox(boxed_tree), shardings)


def _drop_critic(params):
  return {k: v for k, v in params.items() if k not in CRITIC_PARAMS}


class Trainer:
  """Model + objective + optimizer + jitted programs for one config and mesh."""

  def __init__(self, config: Config, mesh: jax.sharding.Mesh):
    self.config = config
    self.mesh = mesh
    heads = {"reward": RewardModel, "value": PolicyWithValue}  # model/reward_head.py
    self.model = (heads[config.head](config.model, config.peft) if config.head in heads
                  else make_model(config.model, config.peft))  # by model.arch
    if config.head == "classify":  # model/pooling_head.py; n_labels set from the data
      self.model = Classifier(config.model, config.peft, max(config.classify.n_labels, 1),
                              config.classify.pooling)
    if config.model_quant != quant.QuantConfig():  # QAT, or QLoRA's quantized base
      self.model = self.model.clone(quant=config.model_quant)
    self.objective = make_objective(config.train.objective, self.model, config)
    # DPO / GRPO with KL: a full fine-tune keeps a frozen copy of its start as
    # frozen["reference"]; a PEFT policy's reference is its frozen base (no copy).
    self.copies_reference = (getattr(self.objective, "needs_reference", False)
                             and config.peft.method == "full")
    self.optimizer = make_optimizer(config.train)
    self.schedule = learning_rate_schedule(config.train)
    with sharding.use_mesh(mesh):
      params_boxed = jax.eval_shape(self._init_params_boxed, jax.random.key(0))
      base_boxed = jax.eval_shape(self._init_base_boxed, jax.random.key(0))
      state_boxed, frozen_boxed = jax.eval_shape(self._init_boxed, jax.random.key(0))
    self.params_shardings = sharding.tree_shardings(params_boxed, mesh)
    # What a checkpoint's params item holds: the model without PPO's critic (the critic
    # is training state, saved in the train_state item: see train_state_item).
    full_abstract = _abstract(params_boxed, self.params_shardings)
    self.abstract_params = _drop_critic(full_abstract)
    self.abstract_critic = {k: full_abstract[k] for k in CRITIC_PARAMS if k in full_abstract}
    self.abstract_base_params = _abstract(
        base_boxed, sharding.tree_shardings(base_boxed, mesh))
    self.state_shardings = sharding.tree_shardings(state_boxed, mesh)
    model_frozen_shardings = sharding.tree_shardings(frozen_boxed, mesh)
    load_frozen = getattr(self.objective, "load_frozen", None)
    self.extra_frozen = load_frozen(mesh) if load_frozen else {}  # e.g. {"teacher": params}
    self.frozen_shardings = {**model_frozen_shardings,
                             **jax.tree.map(lambda x: x.sharding, self.extra_frozen)}
    self.abstract_state = _abstract(state_boxed, self.state_shardings)
    self.batch_sharding = sharding.batch_sharding(mesh, 2)
    replicated = sharding.replicated(mesh)
    self._init = jax.jit(lambda rng: nn.unbox(self._init_boxed(rng)),
                         out_shardings=(self.state_shardings, model_frozen_shardings))
    self._init_params = jax.jit(lambda rng: nn.unbox(self._init_params_boxed(rng)),
                                out_shardings=self.params_shardings)
    self._start = jax.jit(self._start_fn, in_shardings=(self.params_shardings,),
                          out_shardings=(self.state_shardings, model_frozen_shardings))
    self._train_step = jax.jit(
        self._train_step_fn,
        in_shardings=(self.state_shardings, self.frozen_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, replicated),
        donate_argnums=(0,))
    self._eval_step = jax.jit(
        self._eval_step_fn,
        in_shardings=(self.state_shardings.params, self.frozen_shardings, self.batch_sharding),
        out_shardings=replicated)

  def check_batch_size(self):
    """The global batch must split evenly over batch mesh axes and accumulation steps."""
    train = self.config.train
    divisor = sharding.batch_divisor(self.mesh) * train.grad_accum
    if train.batch_size % divisor:
      raise ValueError(
          f"train.batch_size={train.batch_size} must be a multiple of (data*fsdp*expert mesh "
          f"axes) * grad_accum = {divisor}; change --config.train.batch_size or the mesh")

  # -- programs ---------------------------------------------------------------------------

  def _example_tokens(self):
    return jnp.zeros((1, self.config.data.seq_len), jnp.int32)

  def _init_params_boxed(self, rng):
    return init_params(self.model, rng, self._example_tokens())

  def _init_base_boxed(self, rng):
    """Parameters of the same model without PEFT additions: what --init_from reads."""
    return init_params(make_model(self.config.model, PeftConfig()), rng,
                       self._example_tokens())

  def split(self, params):
    """Full parameter tree -> (trainable, frozen dict)."""
    trainable, frozen_model = peft.split(params, self.config.peft)
    for name in HEAD_PARAMS + CLASSIFY_PARAMS:  # heads train whatever the PEFT method
      if name in frozen_model:
        trainable[name] = frozen_model.pop(name)
    return trainable, ({"model": frozen_model} if frozen_model else {})

  def _init_boxed(self, rng):
    return self._start_fn(self._init_params_boxed(rng))

  def _start_fn(self, params):
    trainable, frozen = self.split(params)
    if self.copies_reference:  # a real copy: the trainable tree is donated every step
      frozen = dict(frozen, reference=jax.tree.map(jnp.copy, _drop_critic(params)))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                       opt_state=self.optimizer.init(trainable))
    return state, frozen

  def _train_step_fn(self, state: TrainState, frozen, batch):
    accum = self.config.train.grad_accum
    rng = jax.random.fold_in(jax.random.key(self.config.train.seed), state.step)

    def sums(params, micro_batch, micro_rng):
      loss_sum, weight_sum, metric_sums = self.objective(params, frozen, micro_batch,
                                                         micro_rng)
      return loss_sum, (weight_sum, metric_sums)

    grad_fn = jax.value_and_grad(sums, has_aux=True)
    if accum == 1:
      (loss_sum, (weight_sum, metric_sums)), grad_sums = grad_fn(state.params, batch, rng)
    else:
      micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

      def accumulate(carry, inputs):
        micro_batch, index = inputs
        out = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, carry, out), None

      shapes = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      ((loss_sum, (weight_sum, metric_sums)), grad_sums), _ = jax.lax.scan(
          accumulate, zeros, (micro, jnp.arange(accum)))
    # One division by the weight of the whole global batch: unbiased under accumulation
    # and packing (every target token counts the same, wherever it sits).
    total = jnp.maximum(weight_sum, 1e-9)
    loss = loss_sum / total
    grads = jax.tree.map(lambda g: g / total, grad_sums)
    metrics = jax.tree.map(lambda m: m / total, metric_sums)
    updates, new_opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss)
    new_state = TrainState(
        step=state.step + 1,
        params=_tree_where(finite, new_params, state.params),
        opt_state=_tree_where(finite, new_opt_state, state.opt_state))
    metrics = dict(metrics, loss=loss, grad_norm=_global_norm(grads), target_tokens=weight_sum,
                   learning_rate=self.schedule(state.step), finite=finite)
    return new_state, metrics

  def _eval_step_fn(self, params, frozen, batch):
    return self.objective(params, frozen, batch, jax.random.key(0), train=False)

  # -- public API ---------------------------------------------------------------------------

  def init(self, seed: int):
    """A fresh run: (state, frozen) from random parameters."""
    if self.config.model_quant.stored:
      raise ValueError("peft.base_quant quantizes a trained base: pass --init_from=RUN_DIR "
                       "of a float run")
    with sharding.use_mesh(self.mesh):
      state, frozen = self._init(jax.random.key(seed))
    return state, {**frozen, **self.extra_frozen}

  def init_from(self, base_params, seed: int):
    """A run that starts from `base_params` (a model without PEFT additions): PEFT
    parameters are initialised fresh (LoRA B = 0, zero adapters, the soft prompt from
    vocabulary rows), every other parameter is the base's."""
    with sharding.use_mesh(self.mesh):
      fresh = self._init_params(jax.random.key(seed))
      if self.config.model_quant.stored:  # QLoRA: the float base becomes the int base
        base_params = self._quantize_base(base_params)
      params = peft.graft(base_params, fresh)
      if self.config.peft.method == "prompt_tuning" and self.config.peft.prompt_init == "vocab":
        params = dict(params, soft_prompt=peft.soft_prompt_from_vocab(
            params, jax.random.key(seed + 1), self.config.peft.prompt_length))
      params = jax.tree.map(jax.device_put, params, self.params_shardings)
      state, frozen = self._start(params)
    return state, {**frozen, **self.extra_frozen}

  def _quantize_base(self, base_params):
    """Float base params -> the int8 / int4 base of this model (no PEFT leaves)."""
    q = self.config.model_quant
    model = make_model(self.config.model, PeftConfig(), q)
    target = jax.eval_shape(lambda: init_params(model, jax.random.key(0),
                                                self._example_tokens()))
    return jax.jit(lambda p: quant.quantize_params(p, target, q))(base_params)

  def resume(self, params, train_state: dict, reference=None):
    """(state, frozen) from a checkpoint's full params and its {step, opt_state}; a full
    fine-tune with a reference gets it back from `reference` (the --init_from params)."""
    trainable, frozen = self.split(params)
    if self.copies_reference:
      if reference is None:
        raise ValueError("resuming a run whose objective needs its reference model: the "
                         "reference (--init_from parameters) must be given")
      frozen = dict(frozen, reference=reference)
    if "critic" in train_state:
      trainable = dict(trainable, **train_state["critic"])
    state = TrainState(step=train_state["step"], params=trainable,
                       opt_state=train_state["opt_state"])
    return state, {**frozen, **self.extra_frozen}

  def abstract_train_state(self) -> dict:
    """What a checkpoint's train_state item holds: the step and the optimizer state (and
    PPO's critic)."""
    item = {"step": self.abstract_state.step, "opt_state": self.abstract_state.opt_state}
    return dict(item, critic=self.abstract_critic) if self.abstract_critic else item

  def train_state_item(self, state: TrainState) -> dict:
    """The train_state item of a checkpoint (matches abstract_train_state)."""
    item = {"step": state.step, "opt_state": state.opt_state}
    if self.abstract_critic:
      item["critic"] = {k: state.params[k] for k in self.abstract_critic}
    return item

  def full_params(self, state: TrainState, frozen):
    """The policy's parameters: what is saved and decoded (PPO's critic left out)."""
    return _drop_critic(self.model_params(state, frozen))

  def model_params(self, state: TrainState, frozen):
    """Every parameter the trained module applies with (PPO: the critic too)."""
    return peft.combine(state.params, frozen["model"]) if "model" in frozen else state.params

  def train_step(self, state: TrainState, frozen, batch) -> tuple[TrainState, dict]:
    with sharding.use_mesh(self.mesh):
      return self._train_step(state, frozen, batch)

  def eval_step(self, params, frozen, batch):
    with sharding.use_mesh(self.mesh):
      return self._eval_step(params, frozen, batch)

  def global_batch(self, local_batch: dict, global_rows: int | None = None) -> dict:
    """Assembles this process's rows into global arrays sharded over the batch axes."""
    global_rows = global_rows or self.config.train.batch_size
    return {
        key: jax.make_array_from_process_local_data(
            self.batch_sharding, value, (global_rows, *value.shape[1:]))
        for key, value in local_batch.items()}
