"""Alignment from the command line: reward model, DPO (IPO via the flag), GRPO with the
task reward, PPO with the reward model, best-of-N with --scorer, and the user errors."""

import json
import os

import pytest

from tests.cli_runner import last_json_line, run_module


_run = run_module
_summary = last_json_line


FAST = ["--config.train.steps=2", "--config.train.task_eval_examples=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny base run (the SFT stage is skipped to save time: any plain run can start
  alignment) and a reward model trained from it."""
  root = tmp_path_factory.mktemp("align")
  text = root / "code.txt"
  text.write_text("".join(f"def f{i}(x):\n    return x + {i % 10}\n" for i in range(2000)))
  _run(["train.main", "--config=experiments/quickstart.py:tiny", f"--workdir={root / 'base'}",
        f"--data={text}", "--config.model.max_len=96", "--config.train.steps=2"])
  rm = _run(["train.main", "--config=experiments/reward.py:tiny", f"--workdir={root / 'rm'}",
             f"--init_from={root / 'base'}", *FAST])
  return root, _summary(rm)


@pytest.mark.slow
def test_reward_model_run_is_recorded_as_one(runs):
  root, summary = runs
  assert summary["how"] == "init_from" and summary["step"] == 2
  assert 0.0 <= summary["val_reward_accuracy"] <= 1.0 and summary["val_loss"] > 0
  with open(root / "rm" / "config.json") as f:
    assert json.load(f)["head"] == "reward"


@pytest.mark.slow
def test_ipo_via_the_loss_flag(runs):
  root, _ = runs
  proc = _run(["train.main", "--config=experiments/dpo.py:tiny", f"--workdir={root / 'ipo'}",
               f"--init_from={root / 'base'}", "--config.rl.loss=ipo", "--config.rl.beta=0.5",
               *FAST])
  summary = _summary(proc)
  assert summary["step"] == 2 and 0.0 <= summary["val_reward_accuracy"] <= 1.0
  records = [json.loads(l) for l in open(root / "ipo" / "metrics.jsonl")]
  first = next(r for r in records if "preference_loss" in r)
  assert abs(first["preference_loss"] - 1.0) < 0.05  # (h - 1/(2 beta))^2 with h ~ 0


@pytest.mark.slow
def test_grpo_with_the_task_reward_and_a_kl_to_the_reference(runs):
  root, _ = runs
  proc = _run(["train.main", "--config=experiments/grpo.py:tiny", f"--workdir={root / 'grpo'}",
               f"--init_from={root / 'base'}", "--config.rl.reward=task",
               "--config.rl.kl_beta=0.1", *FAST])
  assert _summary(proc)["step"] == 2
  records = [json.loads(l) for l in open(root / "grpo" / "metrics.jsonl")]
  assert all(r["kl"] >= 0 and 0 <= r["reward"] <= 1 for r in records if "kl" in r)


@pytest.mark.slow
def test_ppo_with_the_reward_model_then_best_of_n_with_scorer(runs):
  root, _ = runs
  proc = _run(["train.main", "--config=experiments/ppo.py:tiny", f"--workdir={root / 'ppo'}",
               f"--init_from={root / 'base'}", f"--config.rl.reward_model={root / 'rm'}",
               *FAST])
  summary = _summary(proc)
  assert summary["step"] == 2 and summary["how"] == "init_from"
  assert "ppo rollout: score" in proc.stderr
  records = [json.loads(l) for l in open(root / "ppo" / "metrics.jsonl")]
  assert all(r["value_loss"] >= 0 for r in records if "value_loss" in r)
  # The PPO run decodes like any run (its critic stays in the train state).
  proc = _run(["infer.generate", f"--workdir={root / 'ppo'}", "--sampler=best_of_n", "--n=4",
               f"--scorer={root / 'rm'}", "--prompt=What is 7 + 5?", "--max_new_tokens=6",
               "--json"])
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert isinstance(record["score"], float) and record["prompt"] == "What is 7 + 5?"


@pytest.mark.slow
def test_user_errors_name_the_fix(runs):
  root, _ = runs
  proc = _run(["infer.generate", f"--workdir={root / 'base'}", "--sampler=best_of_n",
               f"--scorer={root / 'base'}", "--prompt=hi"], check=False)
  assert proc.returncode != 0 and "not a reward model" in proc.stderr
  # A reward model does not generate: the message names what to use instead.
  proc = _run(["infer.generate", f"--workdir={root / 'rm'}", "--prompt=hi"], check=False)
  assert proc.returncode != 0 and "is a reward model" in proc.stderr
  assert f"--scorer={root / 'rm'}" in proc.stderr and "infer.judge" in proc.stderr
  proc = _run(["train.main", "--config=experiments/grpo.py:tiny", f"--workdir={root / 'bad'}",
               f"--init_from={root / 'base'}", "--config.rl.reward=model"], check=False)
  assert proc.returncode != 0 and "--config.rl.reward_model=RM_RUN_DIR" in proc.stderr
  assert not os.path.exists(root / "bad" / "config.json")  # nothing half-written
