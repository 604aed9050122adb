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
from model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh sizes; one axis may be -1, meaning the rest of the devices."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  expert: int = 1

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


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


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict) -> "Config":
    return _from_dict(cls, d)


def _from_dict(cls, d: dict):
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for field in dataclasses.fields(cls):
    if field.name not in d:
      continue
    value = d[field.name]
    if dataclasses.is_dataclass(hints[field.name]):
      value = _from_dict(hints[field.name], value)
    kwargs[field.name] = value
  return cls(**kwargs)


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


def override(config, dotted_key: str, value: str):
  """Returns a copy of `config` with `a.b.c` set from the string `value`."""
  head, _, rest = dotted_key.partition(".")
  names = [f.name for f in dataclasses.fields(config)]
  if head not in names:
    raise ValueError(f"unknown config field {head!r} in {type(config).__name__}; "
                     f"valid fields: {names}")
  current = getattr(config, head)
  hints = typing.get_type_hints(type(config))
  if rest:
    if not dataclasses.is_dataclass(current):
      raise ValueError(f"config field {head!r} has no sub-fields (got {dotted_key!r})")
    return dataclasses.replace(config, **{head: override(current, rest, value)})
  if isinstance(current, ModelConfig):
    return dataclasses.replace(config, **{head: model_config.preset(value)})
  if dataclasses.is_dataclass(current):
    raise ValueError(f"config field {head!r} is a group; set one of its fields, "
                     f"e.g. {head}.{dataclasses.fields(current)[0].name}=...")
  try:
    parsed = _coerce(value, current, hints.get(head))
  except ValueError as e:
    raise ValueError(f"bad value for --config...{dotted_key}: {e}") from None
  return dataclasses.replace(config, **{head: parsed})


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
  for key, value in overrides:
    config = override(config, key, value)
  return config
