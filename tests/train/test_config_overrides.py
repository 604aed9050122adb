"""Config overrides: validated once after all of them, strict round trip, mesh parsing."""

import pytest

from model.mesh import MeshConfig, parse_mesh
from train.config import Config, build_config


def test_overrides_validate_once_so_order_does_not_matter():
  overrides = [("model", "125m"), ("model.d_model", "64"), ("model.n_heads", "4")]
  config = build_config(None, overrides)
  assert (config.model.d_model, config.model.n_heads) == (64, 4)
  with pytest.raises(ValueError, match="not divisible"):
    build_config(None, [("model.d_model", "65")])


def test_peft_and_data_overrides_and_round_trip():
  config = build_config("experiments/sft.py", [("peft.method", "lora"), ("peft.rank", "4"),
                                               ("data.pack", "false")])
  assert config.peft.method == "lora" and config.peft.rank == 4 and not config.data.pack
  assert Config.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="unknown key"):
    Config.from_dict(dict(config.to_dict(), extra={}))
  with pytest.raises(ValueError, match="peft.method"):
    build_config(None, [("peft.method", "qlora2")])


def test_counts_that_must_be_positive():
  with pytest.raises(ValueError, match="train.log_every must be >= 1"):
    build_config(None, [("train.log_every", "0")])


def test_parse_mesh():
  assert parse_mesh("") is None
  assert parse_mesh("tensor=2") == MeshConfig(data=-1, fsdp=1, tensor=2, expert=1)
  assert parse_mesh("data=1,tensor=2") == MeshConfig(data=1, fsdp=1, tensor=2, expert=1)
  with pytest.raises(ValueError, match="bad --mesh entry"):
    parse_mesh("model=2")
