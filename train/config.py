"""Run configuration: nested frozen dataclasses, config files and `--config.a.b=v` overrides.

A config file is a Python file with `get_config(arg: str | None = None) -> Config`;
`--config=path.py:arg` passes `arg`. Any field can then be overridden on the command
line, e.g. `--config.model.n_layers=4 --config.train.steps=200`. A model field given a
preset name (`--config.model=125m`) replaces the whole model config by that preset.
"""

import dataclasses
import importlib.util
import json
import math
import os
import typing

from model import config as model_config
from model.config import ModelConfig, strict_from_dict
from model.mesh import MeshConfig
from model.peft import PeftConfig
from model.quant import QuantConfig

OBJECTIVES = ("lm", "sft", "distill", "reward", "dpo", "grpo", "ppo", "mlm", "classify",
              "seq2seq")
PREFERENCE_LOSSES = ("dpo", "ipo", "simpo")
RL_REWARDS = ("task", "model")
HEADS = ("lm", "reward", "value", "classify")  # model/reward_head.py, model/pooling_head.py
POOLINGS = ("mean", "first")  # model/pooling_head.py
LABEL_TASKS = ("auto", "classification", "regression")
KL_ESTIMATORS = ("k1", "k3")
DISTILL_METHODS = ("logits", "data", "on_policy")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False,
                 high_open: bool = False) -> None:
  """A finite number within [low, high] (or open at either end), else a clear error."""
  ok = math.isfinite(value)
  ok = ok and (value > low if low_open else value >= low)
  ok = ok and (value < high if high_open else value <= high)
  if not ok:
    if high == math.inf:
      bound = f"{'>' if low_open else '>='} {low}"
    else:
      bound = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ValueError(f"{name}={value} must be a finite number {bound}; "
                     f"set --config.{name} accordingly")
DATA_KINDS = ("text", "sft", "preference", "rollout", "mlm", "labelled", "seq2seq",
              "span_corruption")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the text comes from and how it becomes tokens."""
  data: str = ""  # path or glob of .txt/.jsonl files; "" means the embedded corpus
  jsonl_field: str = "text"
  max_corpus_bytes: int = 0  # 0 means the whole corpus
  tokenizer: str = "sentencepiece"  # or "byte"
  sp_model_type: str = "bpe"  # or "unigram"
  sp_vocab_size: int = 2048
  sp_character_coverage: float = 1.0
  seq_len: int = 128
  val_fraction: float = 0.02
  cache_dir: str = ""  # "" means ~/.cache/jaxlm
  tokenize_workers: int = 0  # processes that tokenize the corpus; 0: 1 below 64 MB, else cores
  # Fine-tuning data (kind="sft"): `data` is a jsonl of {prompt, response} or {messages};
  # "" means the embedded instruction tasks (train/data/tasks.py).
  kind: str = "text"  # "text" (a corpus) | "sft" | "preference" (pairs) | "rollout" (RL prompts)
  # | "mlm" (a corpus, masked: train/data/mlm.py) | "labelled" ({text, label} jsonl)
  chat_template: str = "plain"  # model/chat.py TEMPLATES; recorded in the run directory
  pack: bool = True  # several examples per row, separated by segment ids
  sft_train_per_task: int = 2000  # embedded tasks: training examples per task
  sft_heldout_per_task: int = 40  # embedded tasks: held-out examples per task
  # Preference data (kind="preference"): `data` is a jsonl of {prompt, chosen, rejected} or
  # {messages, chosen, rejected}; "" means pairs generated from the embedded tasks.
  pref_train_per_task: int = 400  # embedded pairs per task (train split)
  pref_heldout_per_task: int = 20  # embedded pairs per task (held-out prompts)
  # Seq2seq data (kind="seq2seq", train/data/seq2seq.py): `data` is a jsonl of {source,
  # target}; "" means the embedded number-words set. seq_len is the target (decoder) length.
  source_len: int = 0  # encoder length; 0 means seq_len
  seq2seq_train: int = 20000  # embedded set: training pairs
  seq2seq_heldout: int = 200  # embedded set: pairs of never-trained numbers, for scoring
  seq2seq_directions: str = "all"  # embedded set: "all" or e.g. "pt->en,en->digits"
  seq2seq_max_number: int = 9999  # embedded set: numbers 0..this
  # Span corruption (kind="span_corruption", train/data/span_corruption.py): corpus windows
  # of source_len tokens -> T5 sentinel source / target rows (target length seq_len).
  span_noise_density: float = 0.15
  span_mean_length: float = 3.0
  span_sentinels: int = 8  # ids above the tokenizer's vocabulary

  def __post_init__(self):
    if self.kind not in DATA_KINDS:
      raise ValueError(f"data.kind={self.kind!r} is not one of {DATA_KINDS}")
    if self.seq_len < 1:
      raise ValueError(f"data.seq_len must be >= 1, got {self.seq_len}")
    _check_range("data.val_fraction", self.val_fraction, 0.0, 1.0, low_open=True,
                 high_open=True)
    if self.tokenize_workers < 0:
      raise ValueError(f"data.tokenize_workers must be >= 0 (0 = automatic), got "
                       f"{self.tokenize_workers}")
    if self.source_len < 0:
      raise ValueError(f"data.source_len must be >= 0 (0 = seq_len), got {self.source_len}")
    for name in ("sft_train_per_task", "sft_heldout_per_task", "seq2seq_train",
                 "seq2seq_heldout"):
      if getattr(self, name) < 1:
        raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation, schedule, logging and checkpointing."""
  steps: int = 200
  batch_size: int = 16  # global, in sequences
  grad_accum: int = 1
  learning_rate: float = 3e-3
  warmup_steps: int = 20
  lr_floor: float = 0.1  # final LR as a fraction of the peak
  weight_decay: float = 0.1
  decay_norms_and_embeddings: bool = False
  beta1: float = 0.9
  beta2: float = 0.95
  grad_clip: float = 1.0
  seed: int = 0
  log_every: int = 10
  eval_every: int = 100
  eval_batches: int = 8
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  samples: int = 3  # generated samples printed at the end
  sample_tokens: int = 48
  peak_flops: float = 0.0  # per device; 0 means look up the datasheet / measure
  objective: str = "lm"  # train/objectives/: "lm" (next token) | "sft" (response tokens)
  init_from: str = ""  # a run directory whose parameters (and tokenizer) start this run
  task_eval_examples: int = 0  # held-out examples decoded per task at eval (0 = off)
  task_eval_tokens: int = 24  # max new tokens per task answer
  accept_data_change: bool = False  # resume even if the data or tokenizer changed since
  eval_set: str = ""  # an infer.evaluate eval-set jsonl scored every eval_every steps
  eval_set_metrics: str = "exact,f1"  # infer/eval/metrics.py names, comma-separated

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"train.objective={self.objective!r} is not one of {OBJECTIVES}")
    for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every",
                 "keep_checkpoints", "eval_batches", "task_eval_tokens"):
      if getattr(self, name) < 1:
        raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}; set "
                         f"--config.train.{name} to a positive integer")
    for name in ("warmup_steps", "eval_every", "samples", "task_eval_examples"):
      if getattr(self, name) < 0:
        raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}; set "
                         f"--config.train.{name} to 0 or more")
    _check_range("train.learning_rate", self.learning_rate, 0.0, math.inf, low_open=True)
    _check_range("train.lr_floor", self.lr_floor, 0.0, 1.0)
    _check_range("train.weight_decay", self.weight_decay, 0.0, math.inf)
    _check_range("train.beta1", self.beta1, 0.0, 1.0, high_open=True)
    _check_range("train.beta2", self.beta2, 0.0, 1.0, high_open=True)
    _check_range("train.grad_clip", self.grad_clip, 0.0, math.inf)


@dataclasses.dataclass(frozen=True)
class RlConfig:
  """Alignment: preference losses (reward, dpo) and on-policy RL (grpo)."""
  loss: str = "dpo"  # the dpo objective's loss: "dpo" | "ipo" | "simpo"
  beta: float = 0.1  # DPO/IPO/SimPO inverse temperature
  label_smoothing: float = 0.0  # conservative DPO: assumed label-flip probability
  simpo_gamma: float = 0.5  # SimPO target reward margin
  reward_margin: float = 0.0  # reward model: BT margin added to every pair (plus a row's "margin")
  group_size: int = 4  # GRPO: samples per prompt
  clip_eps: float = 0.2  # GRPO: ratio clip
  kl_beta: float = 0.0  # GRPO: weight of the k3 KL to the reference (0 = no reference loaded)
  reward: str = "task"  # GRPO: "task" (tasks.score, verifiable) | "model" (reward_model)
  reward_model: str = ""  # a reward-model run directory (python -m train.main ...reward.py)
  max_new_tokens: int = 12  # GRPO: tokens per rollout
  temperature: float = 1.0  # GRPO: rollout sampling temperature
  updates_per_rollout: int = 1  # GRPO / PPO: epochs over each rollout
  minibatches: int = 1  # GRPO / PPO: a rollout is minibatches x batch_size rows
  # PPO (objective ppo, head value): per-token rewards = score at the end - kl_coef * KL_t.
  kl_coef: float = 0.05  # initial KL penalty coefficient
  kl_target: float = 0.0  # adaptive controller target KL per sequence (0 = fixed kl_coef)
  kl_horizon: int = 10_000
  kl_estimator: str = "k1"  # "k1" (log-ratio) | "k3" (non-negative)
  gamma: float = 1.0
  lam: float = 0.95  # GAE lambda
  vf_coef: float = 0.1  # critic loss weight
  vf_clip: float = 0.2  # value clipping around the rollout-time values
  whiten_advantages: bool = True

  def __post_init__(self):
    for name, value, choices in (("loss", self.loss, PREFERENCE_LOSSES),
                                 ("reward", self.reward, RL_REWARDS)):
      if value not in choices:
        raise ValueError(f"rl.{name}={value!r} is not one of {choices}; set "
                         f"--config.rl.{name} to one of them")
    if self.group_size < 1 or self.updates_per_rollout < 1 or self.minibatches < 1:
      raise ValueError("rl.group_size, rl.updates_per_rollout and rl.minibatches must be >= 1")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"rl.kl_estimator={self.kl_estimator!r} is not one of {KL_ESTIMATORS}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Knowledge distillation from a frozen teacher run (train/objectives/distill.py).

  Per target token: kd_weight * T^2 * D(teacher_T, student_T) + (1 - kd_weight) * CE, where
  _T is the softmax at temperature T and D the divergence ("jsd" mixes with jsd_beta).
  """
  teacher: str = ""  # run directory of the teacher (params only are read)
  method: str = "logits"  # "logits" | "data" | "on_policy"
  divergence: str = "forward_kl"  # "forward_kl" | "reverse_kl" | "jsd"
  jsd_beta: float = 0.5
  temperature: float = 1.0
  kd_weight: float = 0.5
  # method=data: teacher continuations of training-window prompts, mixed into the batches.
  synthetic_prompts: int = 256
  prompt_tokens: int = 16
  synthetic_tokens: int = 112
  mix: float = 0.5  # probability that a training row is a synthetic one

  def __post_init__(self):
    if not 0.0 <= self.mix < 1.0 or min(self.synthetic_prompts, self.prompt_tokens,
                                        self.synthetic_tokens) < 1:
      raise ValueError("distill.mix must be in [0, 1) and distill.synthetic_prompts, "
                       "prompt_tokens, synthetic_tokens >= 1")
    if self.method not in DISTILL_METHODS:
      raise ValueError(f"distill.method={self.method!r} is not one of {DISTILL_METHODS}")
    if self.divergence not in DIVERGENCES:
      raise ValueError(f"distill.divergence={self.divergence!r} is not one of {DIVERGENCES}")
    if not self.temperature > 0:
      raise ValueError(f"distill.temperature={self.temperature} must be positive")
    if not 0.0 <= self.kd_weight <= 1.0 or not 0.0 < self.jsd_beta < 1.0:
      raise ValueError("distill.kd_weight must be in [0, 1] and distill.jsd_beta in (0, 1); "
                       f"got {self.kd_weight} and {self.jsd_beta}")


@dataclasses.dataclass(frozen=True)
class MlmConfig:
  """Masked-LM corruption (train/data/mlm.py): BERT's selection and 80/10/10 replacement."""
  mask_rate: float = 0.15  # share of (non-padding) tokens selected for prediction
  mask_fraction: float = 0.8  # of the selected: replaced by [MASK]
  random_fraction: float = 0.1  # of the selected: replaced by a random token (rest kept)
  span_mean: float = 0.0  # > 0: select whole spans of ~this mean length (span corruption)

  def __post_init__(self):
    _check_range("mlm.mask_rate", self.mask_rate, 0.0, 1.0, low_open=True, high_open=True)
    _check_range("mlm.mask_fraction", self.mask_fraction, 0.0, 1.0)
    _check_range("mlm.random_fraction", self.random_fraction, 0.0, 1.0)
    if self.mask_fraction + self.random_fraction > 1.0:
      raise ValueError(f"mlm.mask_fraction + mlm.random_fraction = "
                       f"{self.mask_fraction + self.random_fraction} must be <= 1")
    _check_range("mlm.span_mean", self.span_mean, 0.0, 64.0)


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
  """Sequence classification / regression on a pooled encoder state (model/pooling_head.py)."""
  pooling: str = "mean"  # "mean" over non-padding tokens | "first" token
  task: str = "auto"  # "auto": float labels -> regression, else classification
  n_labels: int = 0  # 0: from the data (classes seen; 1 output for regression)

  def __post_init__(self):
    for name, value, choices in (("pooling", self.pooling, POOLINGS),
                                 ("task", self.task, LABEL_TASKS)):
      if value not in choices:
        raise ValueError(f"classify.{name}={value!r} is not one of {choices}; set "
                         f"--config.classify.{name} to one of them")
    if self.n_labels < 0:
      raise ValueError(f"classify.n_labels must be >= 0, got {self.n_labels}")


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig = ModelConfig()
  peft: PeftConfig = PeftConfig()
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()
  quant: QuantConfig = QuantConfig()  # training: qat only (QLoRA: peft.base_quant)
  distill: DistillConfig = DistillConfig()
  rl: RlConfig = RlConfig()
  mlm: MlmConfig = MlmConfig()
  classify: ClassifyConfig = ClassifyConfig()
  head: str = "lm"  # "lm" (next-token logits) | "reward" (a scalar per sequence: reward model)
  # | "classify" (pooled encoder state -> labels: model/pooling_head.py)

  def __post_init__(self):
    if self.head not in HEADS:
      raise ValueError(f"head={self.head!r} is not one of {HEADS}")
    if (self.head == "reward") != (self.train.objective == "reward"):
      raise ValueError("a reward model needs --config.head=reward with "
                       "--config.train.objective=reward (use experiments/reward.py)")
    if (self.head == "value") != (self.train.objective == "ppo"):
      raise ValueError("PPO needs its critic: --config.head=value with "
                       "--config.train.objective=ppo (use experiments/ppo.py)")
    self._check_encoder_objectives()
    self._check_compression()

  def _check_encoder_objectives(self):
    objective, kind = self.train.objective, self.data.kind
    if (self.head == "classify") != (objective == "classify"):
      raise ValueError("a classifier needs --config.head=classify with "
                       "--config.train.objective=classify (use experiments/encoder.py:classify)")
    for name, want in (("mlm", "mlm"), ("classify", "labelled")):
      if (objective == name) != (kind == want):
        raise ValueError(f"--config.train.objective={name} goes with --config.data.kind={want} "
                         f"(got objective={objective!r}, data.kind={kind!r}); use "
                         "experiments/encoder.py")

  def _check_compression(self):
    if self.quant.scheme != "none":
      raise ValueError(
          f"quant.scheme={self.quant.scheme!r} stores integer weights, which do not train: "
          "use --config.quant.qat=... (QAT), --config.peft.base_quant=... (QLoRA), or "
          "python -m infer.quantize after training")

  @property
  def model_quant(self) -> QuantConfig:
    """The quant config of the trained model (QAT, or QLoRA's quantized base)."""
    from model.quant import effective  # pylint: disable=g-import-not-at-top
    return effective(self.quant, self.peft.base_quant)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict, where: str = "config") -> "Config":
    """Strict: an unknown key anywhere is an error naming it (see strict_from_dict)."""
    return strict_from_dict(cls, d, where)


def load_config_file(spec: str) -> Config:
  """Loads `path.py` or `path.py:arg` and calls its get_config."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} not found; pass --config=experiments/quickstart.py "
                            "or another file defining get_config()")
  module_spec = importlib.util.spec_from_file_location("_jaxlm_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} must define get_config()")
  config = module.get_config(arg) if arg else module.get_config()
  if not isinstance(config, Config):
    raise TypeError(f"{path}:get_config() must return train.config.Config, got {type(config)}")
  return config


def _coerce(value: str, current, field_type):
  """Parses a command-line string into the type of the field it overrides."""
  if field_type is bool or isinstance(current, bool):
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
      return True
    if lowered in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"expected a boolean, got {value!r}")
  if field_type is int or (isinstance(current, int) and field_type is not float):
    return int(float(value)) if "e" in value.lower() else int(value)
  if field_type is float or isinstance(current, float):
    return float(value)
  return value


def _override_dict(cls, values: dict, dotted_key: str, value: str) -> None:
  """Sets `a.b.c` in the nested dict `values` of dataclass `cls` from the string `value`."""
  head, _, rest = dotted_key.partition(".")
  names = [f.name for f in dataclasses.fields(cls)]
  if head not in names:
    raise ValueError(f"unknown config field {head!r} in {cls.__name__}; "
                     f"valid fields: {names}")
  hint = typing.get_type_hints(cls)[head]
  if rest:
    if not dataclasses.is_dataclass(hint):
      raise ValueError(f"config field {head!r} has no sub-fields (got {dotted_key!r})")
    _override_dict(hint, values[head], rest, value)
  elif hint is ModelConfig:
    values[head] = dataclasses.asdict(model_config.preset(value))
  elif dataclasses.is_dataclass(hint):
    raise ValueError(f"config field {head!r} is a group; set one of its fields, "
                     f"e.g. {head}.{dataclasses.fields(hint)[0].name}=...")
  else:
    try:
      values[head] = _coerce(value, values[head], hint)
    except ValueError as e:
      raise ValueError(f"bad value for --config.{dotted_key}: {e}") from None


def override(config, dotted_key: str, value: str):
  """Returns a copy of `config` with `a.b.c` set from the string `value`."""
  return apply_overrides(config, [(dotted_key, value)])


def apply_overrides(config, overrides: list[tuple[str, str]]):
  """Applies every override to a dict, then builds (and validates) the config once, so
  that the order of related overrides (d_model before n_heads) does not matter."""
  values = dataclasses.asdict(config)
  for key, value in overrides:
    _override_dict(type(config), values, key, value)
  return strict_from_dict(type(config), values, "config")


def split_config_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Takes `--config.a.b=v` (or `--config.a.b v`) out of argv; returns (rest, overrides)."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          raise ValueError(f"{arg} needs a value")
        value = argv[i + 1]
        i += 1
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def build_config(config_spec: str | None, overrides: list[tuple[str, str]]) -> Config:
  config = load_config_file(config_spec) if config_spec else Config()
  return apply_overrides(config, overrides)
