"""The training loop in-process: exact resume, stop/continue, divergence guard."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from infer.loading import load_model
from train import checkpoint
from train.config import build_config
from train.loop import TrainingDiverged, train


def _tiny_config(text_file, **train_overrides):
  config = build_config("experiments/quickstart.py:tiny", [("data.data", str(text_file))])
  return dataclasses.replace(config, train=dataclasses.replace(config.train, **train_overrides))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "corpus.txt"
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "def", "return", "(", ")", ":", "\n"]
  path.write_text(" ".join(rng.choice(words, size=40_000)))
  return path


def test_resume_matches_uninterrupted_run(tmp_path, text_file):
  config = _tiny_config(text_file, steps=6, checkpoint_every=100, eval_every=0)
  straight = train(config, str(tmp_path / "straight"))
  first = train(config, str(tmp_path / "split"), stop_at_step=3)
  assert first["stopped_early"] and first["step"] == 3
  second = train(config, str(tmp_path / "split"))
  assert second["start_step"] == 3 and second["step"] == 6
  assert second["val_loss"] == pytest.approx(straight["val_loss"], rel=1e-6)
  a = load_model(str(tmp_path / "straight")).params
  b = load_model(str(tmp_path / "split")).params
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  lines = [json.loads(l) for l in open(tmp_path / "split" / checkpoint.METRICS_FILE)]
  assert any(l.get("final") for l in lines)
  assert os.path.exists(tmp_path / "split" / checkpoint.TOKENIZER_DIR)


def test_resume_refuses_a_different_model(tmp_path, text_file):
  config = _tiny_config(text_file, steps=2, eval_every=0)
  train(config, str(tmp_path / "run"))
  other = dataclasses.replace(config, model=dataclasses.replace(config.model, d_model=48))
  with pytest.raises(ValueError, match="different model"):
    train(other, str(tmp_path / "run"))


def test_divergence_stops_with_last_good_checkpoint(tmp_path, text_file):
  config = _tiny_config(text_file, steps=8, learning_rate=1e30, warmup_steps=0, grad_clip=0.0,
                        checkpoint_every=100, log_every=1, eval_every=0)
  with pytest.raises(TrainingDiverged, match="intact"):
    train(config, str(tmp_path / "run"))
