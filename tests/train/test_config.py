"""Config files and --config.a.b=v overrides."""

import pytest

from train import config as config_lib


def test_overrides_parse_into_field_types():
  config = config_lib.build_config("experiments/quickstart.py", [
      ("model.n_layers", "3"), ("train.learning_rate", "1e-4"), ("model.tie_embeddings", "true"),
      ("data.data", "a/*.txt"), ("mesh.fsdp", "2"), ("train.steps", "1e3")])
  assert config.model.n_layers == 3
  assert config.train.learning_rate == pytest.approx(1e-4)
  assert config.model.tie_embeddings is True
  assert config.data.data == "a/*.txt"
  assert config.mesh.fsdp == 2
  assert config.train.steps == 1000 and isinstance(config.train.steps, int)


def test_model_preset_by_name():
  config = config_lib.override(config_lib.Config(), "model", "moe_tiny")
  assert config.model.n_experts == 8


def test_split_overrides_from_argv():
  rest, overrides = config_lib.split_config_overrides(
      ["prog", "--workdir=x", "--config.train.steps=5", "--config.model.d_model", "32"])
  assert rest == ["prog", "--workdir=x"]
  assert overrides == [("train.steps", "5"), ("model.d_model", "32")]


@pytest.mark.parametrize("key,value,match", [
    ("model.n_layerz", "2", "unknown config field 'n_layerz'"),
    ("model.n_layers", "two", "bad value"),
    ("train", "3", "is a group"),
    ("model", "nope", "unknown model preset"),
    ("model.n_heads", "3", "not divisible"),
])
def test_bad_overrides_name_the_problem(key, value, match):
  with pytest.raises(ValueError, match=match):
    config_lib.override(config_lib.Config(), key, value)


def test_json_round_trip():
  config = config_lib.build_config("experiments/quickstart.py", [("model.n_experts", "4")])
  assert config_lib.Config.from_dict(__import__("json").loads(config.to_json())) == config


def test_missing_config_file():
  with pytest.raises(FileNotFoundError, match="not found"):
    config_lib.load_config_file("nope/missing.py")
