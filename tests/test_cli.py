"""End-to-end command lines: train on a user text file, resume, decode, and the user errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, env_extra=None, check=True, timeout=600):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", **(env_extra or {}))
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


@pytest.fixture(scope="module")
def user_text(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "mine.txt"
  rng = np.random.default_rng(0)
  lines = [f"def f{i}(x):\n    return x * {rng.integers(100)}\n" for i in range(3000)]
  path.write_text("".join(lines))
  return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, user_text):
  workdir = tmp_path_factory.mktemp("runs") / "cli"
  args = ["train.main", "--config=experiments/quickstart.py:tiny", f"--workdir={workdir}",
          f"--data={user_text}", "--config.train.steps=8", "--config.train.eval_every=4"]
  proc = _run(args)
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  return workdir, summary, args


@pytest.mark.slow
def test_train_cli_writes_a_run_directory(trained_run, user_text):
  workdir, summary, _ = trained_run
  assert summary["step"] == 8 and np.isfinite(summary["val_loss"])
  for name in ("config.json", "data.json", "metrics.jsonl", "tokenizer", "checkpoints"):
    assert os.path.exists(workdir / name), name
  data = json.load(open(workdir / "data.json"))
  assert str(user_text) in data["corpus"] and data["n_train_tokens"] > 0
  records = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert {"loss", "tokens_per_s", "mfu", "grad_norm", "learning_rate"} <= set(records[0])


@pytest.mark.slow
def test_rerun_resumes_and_does_nothing_more(trained_run):
  workdir, summary, args = trained_run
  again = json.loads(_run(args).stdout.strip().splitlines()[-1])
  assert again["start_step"] == 8 and again["val_loss"] == pytest.approx(summary["val_loss"])


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [["--sampler=greedy", "--logprobs"],
                                     ["--sampler=top_p", "--top_p=0.9", "--temperature=0.7"],
                                     ["--sampler=beam", "--num_beams=3"],
                                     ["--preset=creative", "--sampler=best_of_n", "--n=2"]])
def test_generate_cli(trained_run, sampler):
  workdir, _, _ = trained_run
  proc = _run(["infer.generate", f"--workdir={workdir}", "--prompt=def f(x):",
               "--max_new_tokens=6", "--json", *sampler])
  records = [json.loads(l) for l in proc.stdout.strip().splitlines()]
  assert len(records) == 1 and records[0]["prompt"] == "def f(x):"
  assert 1 <= records[0]["n_tokens"] <= 6
  if "--logprobs" in sampler:
    assert all(lp <= 0 for lp in records[0]["logprobs"])


@pytest.mark.slow
def test_generate_batch_from_prompts_file(trained_run, tmp_path):
  workdir, _, _ = trained_run
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("def f(x):\nreturn\nclass A:\\n    def\n")
  proc = _run(["infer.generate", f"--checkpoint={workdir}/checkpoints/8",
               f"--prompts_file={prompts}", "--max_new_tokens=4", "--json"])
  assert len(proc.stdout.strip().splitlines()) == 3


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["infer.generate", "--workdir=/nonexistent/run", "--prompt=x"], "does not exist"),
    (["infer.generate", "--workdir={run}", "--prompt="], "empty"),
    (["infer.generate", "--workdir={run}", "--prompt=" + "x" * 80], "context"),
    (["train.main", "--config=experiments/quickstart.py:tiny", "--workdir={tmp}/a",
      "--config.mesh.data=3"], "devices"),
    (["train.main", "--config=experiments/quickstart.py:tiny", "--workdir={tmp}/b",
      "--data=/nonexistent/*.txt"], "no data files match"),
    (["train.main", "--config=experiments/quickstart.py:tiny", "--workdir={tmp}/c",
      "--data={small}"], "add more data"),
    (["train.main", "--config=experiments/quickstart.py:tiny", "--workdir={tmp}/d",
      "--config.model.n_layerz=2"], "unknown config field"),
])
def test_user_errors_are_clear(trained_run, tmp_path, args, message):
  workdir, _, _ = trained_run
  small = tmp_path / "small.txt"
  small.write_text("tiny corpus")
  args = [a.format(run=workdir, tmp=tmp_path, small=small) for a in args]
  proc = _run(args, check=False, timeout=300)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_rerun_resumes(tmp_path, user_text):
  import signal
  import time
  workdir = tmp_path / "sig"
  args = [sys.executable, "-m", "train.main", "--config=experiments/quickstart.py:tiny",
          f"--workdir={workdir}", f"--data={user_text}", "--config.train.steps=100000",
          "--config.train.log_every=1", "--config.train.eval_every=0"]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(workdir / "metrics.jsonl") and len(open(workdir / "metrics.jsonl")
                                                          .readlines()) >= 3:
        break
      time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 0, stderr[-2000:]
  assert "rerun the same command to resume" in stderr
  saved = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert saved and max(saved) >= 3
  resumed = _run(args[2:] + ["--stop_at_step=" + str(max(saved) + 2)])
  summary = json.loads(resumed.stdout.strip().splitlines()[-1])
  assert summary["start_step"] == max(saved) and summary["step"] == max(saved) + 2


@pytest.mark.slow
def test_moe_model_trains_and_decodes_from_the_cli(tmp_path, user_text):
  workdir = tmp_path / "moe"
  proc = _run(["train.main", "--config=experiments/quickstart.py:tiny", f"--workdir={workdir}",
               f"--data={user_text}", "--config.model=moe_tiny", "--config.model.max_len=64",
               "--config.train.steps=4", "--config.train.log_every=2"])
  assert "moe: load_balance" in proc.stderr
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  from model import flops
  from train.checkpoint import load_config
  counts = flops.param_counts(load_config(str(workdir)).model)
  assert summary["params"] == counts["total"] > counts["active"]
  out = _run(["infer.generate", f"--workdir={workdir}", "--prompt=def f(x):",
              "--max_new_tokens=4", "--json"])
  assert json.loads(out.stdout.strip().splitlines()[-1])["n_tokens"] == 4
