"""Run configuration: nested frozen dataclasses, config files and `--config.a.b=v` overrides.

A config file is a Python file with `get_config(arg: str | None = None) -> Config`;
`--config=path.py:arg` passes `arg`. Any field can then be overridden on the command
line, e.g. `--config.model.n_layers=4 --config.train.steps=200`. A model field given a
preset name (`--config.model=125m`) replaces the whole model config by that preset.
"""

import dataclasses
import importlib.util
import json
import os
import typing

from model import config as model_config
from model.config import ModelConfig, strict_from_dict
from model.mesh import MeshConfig
from model.peft import PeftConfig

OBJECTIVES = ("lm", "sft")
DATA_KINDS = ("text", "sft")


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
  # Fine-tuning data (kind="sft"): `data` is a jsonl of {prompt, response} or {messages};
  # "" means the embedded instruction tasks (train/data/tasks.py).
  kind: str = "text"  # "text" (a corpus for next-token training) | "sft"
  chat_template: str = "plain"  # model/chat.py TEMPLATES; recorded in the run directory
  pack: bool = True  # several examples per row, separated by segment ids
  sft_train_per_task: int = 2000  # embedded tasks: training examples per task
  sft_heldout_per_task: int = 40  # embedded tasks: held-out examples per task

  def __post_init__(self):
    if self.kind not in DATA_KINDS:
      raise ValueError(f"data.kind={self.kind!r} is not one of {DATA_KINDS}")


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

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"train.objective={self.objective!r} is not one of {OBJECTIVES}")
    for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}; set "
                         f"--config.train.{name} to a positive integer")


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig = ModelConfig()
  peft: PeftConfig = PeftConfig()
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()

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
