"""GRPO and PPO runs stopped mid-rollout and resumed equal uninterrupted runs bit for bit.

The stop falls inside a rollout that serves two steps (rl.updates_per_rollout=2): the
resumed run must continue that rollout (sampled from parameters that no longer exist),
not sample a new one; PPO's adaptive KL coefficient must continue where it was.
"""

import json
import logging

import jax
import numpy as np
import pytest

from infer.loading import load_model
from train import checkpoint
from train.config import build_config
from train.loop import train
from train.rl.rollout import RolloutDataset

_COMMON = [("train.checkpoint_every", "100"), ("train.eval_every", "0"),
           ("train.task_eval_examples", "0"), ("train.warmup_steps", "0"),
           ("train.learning_rate", "1e-2"), ("rl.updates_per_rollout", "2"),
           ("rl.max_new_tokens", "6")]


@pytest.fixture(autouse=True)
def _varied_rewards(monkeypatch):
  """A tiny random policy never solves a task: reward the share of even token ids instead,
  so that advantages (and therefore updates) are not all zero."""
  monkeypatch.setattr(RolloutDataset, "rewards", lambda self, rows, prompts, completions:
                      np.asarray([np.mean(np.asarray(c) % 2 == 0) if c else 0.0
                                  for c in completions], np.float32))


def _losses(workdir):
  with open(f"{workdir}/{checkpoint.METRICS_FILE}") as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _same_run(config, tmp_path, stop_at: int):
  straight = train(config, str(tmp_path / "straight"))
  first = train(config, str(tmp_path / "split"), stop_at_step=stop_at)
  assert first["stopped_early"] and first["step"] == stop_at
  second = train(config, str(tmp_path / "split"))
  assert second["start_step"] == stop_at and second["step"] == config.train.steps
  a = load_model(str(tmp_path / "straight")).params
  b = load_model(str(tmp_path / "split")).params
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert _losses(tmp_path / "split") == _losses(tmp_path / "straight")
  before = load_model(str(tmp_path / "split"), step=stop_at).params
  assert any(not np.array_equal(np.asarray(x), np.asarray(y))  # the run did learn
             for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(a)))
  return straight


@pytest.mark.slow
def test_grpo_resumed_mid_rollout_equals_uninterrupted(tmp_path):
  config = build_config("experiments/grpo.py:tiny", [
      *_COMMON, ("train.steps", "4"), ("train.log_every", "1"), ("rl.kl_beta", "0.1")])
  _same_run(config, tmp_path, stop_at=3)  # step 3 is the second use of rollout 1


@pytest.mark.slow
def test_ppo_resumed_equals_uninterrupted_with_adaptive_kl(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  caplog.set_level(logging.INFO, logger="absl")  # an earlier in-process flag parse may set absl to WARNING
  config = build_config("experiments/ppo.py:tiny", [
      *_COMMON, ("train.steps", "6"), ("train.log_every", "1"), ("rl.reward", "task"),
      ("rl.kl_target", "0.01"), ("rl.kl_horizon", "4")])
  _same_run(config, tmp_path, stop_at=3)
  # The controller moved, so a run that forgot it would have used another coefficient.
  coefs = {m.split("(coef ")[1] for m in caplog.messages if "(coef " in m}
  assert len(coefs) > 1
