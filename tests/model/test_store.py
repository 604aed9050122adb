"""The saved-model format: versioned config.json, params-only reads, format-1 run dirs."""

import json
import os
import shutil

import numpy as np
import pytest

from model import store
from model.config import ModelConfig, strict_from_dict

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")


def _copy_v1(tmp_path):
  path = tmp_path / "v1_run"
  shutil.copytree(os.path.join(DATA, "v1_run"), path)
  return str(path)


def test_format_1_run_dir_decodes_exactly(tmp_path):
  """A run dir written before params-only checkpoints (committed test data, produced by
  the code at a7a2a32) loads, and gives the logits that code computed."""
  import jax.numpy as jnp
  from infer.loading import load_model
  from model.transformer import Transformer
  loaded = load_model(_copy_v1(tmp_path))
  assert loaded.step == 2 and loaded.peft.method == "full"
  tokens = jnp.asarray(np.arange(1, 17, dtype=np.int32).reshape(2, 8))
  logits, _ = Transformer(loaded.model_config, loaded.peft).apply({"params": loaded.params},
                                                                 tokens)
  want = np.load(os.path.join(DATA, "v1_run_logits.npy"))
  np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-5)


def test_newer_format_is_a_clear_error(tmp_path):
  path = _copy_v1(tmp_path)
  config = json.load(open(os.path.join(path, store.CONFIG_FILE)))
  config["format_version"] = store.FORMAT_VERSION + 1
  json.dump(config, open(os.path.join(path, store.CONFIG_FILE), "w"))
  with pytest.raises(ValueError, match="newer than this code reads"):
    store.read_run_config(path)


def test_unknown_model_key_is_a_clear_error(tmp_path):
  path = _copy_v1(tmp_path)
  config = json.load(open(os.path.join(path, store.CONFIG_FILE)))
  config["model"]["n_wizards"] = 3
  json.dump(config, open(os.path.join(path, store.CONFIG_FILE), "w"))
  with pytest.raises(ValueError, match="unknown key.*n_wizards"):
    store.read_run_config(path).model_config()


def test_strict_from_dict_builds_nested_and_refuses_unknown():
  assert strict_from_dict(ModelConfig, {"d_model": 32, "n_heads": 2}, "x").d_model == 32
  with pytest.raises(ValueError, match="unknown key"):
    strict_from_dict(ModelConfig, {"d_modle": 32}, "x")


def test_not_a_run_dir_and_missing_step(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a run directory"):
    store.read_run_config(str(tmp_path))
  path = _copy_v1(tmp_path)
  with pytest.raises(FileNotFoundError, match="available: \\[2\\]"):
    store.restore_params(path, {}, step=7)


def test_upgrade_v1_params_moves_projection_weights_under_kernel():
  import jax
  import jax.numpy as jnp
  sds = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  old = {"attn": {"query": np.ones((4, 2, 2))}, "attn_norm": {"scale": np.ones(4)}}
  abstract = {"attn": {"query": {"kernel": sds(4, 2, 2)}}, "attn_norm": {"scale": sds(4)}}
  new = store.upgrade_v1_params(old, abstract)
  assert new["attn"]["query"]["kernel"].shape == (4, 2, 2)
  with pytest.raises(ValueError, match="no parameter /attn/key"):
    store.upgrade_v1_params(old, dict(abstract, attn={"key": {"kernel": sds(4, 2, 2)}}))
