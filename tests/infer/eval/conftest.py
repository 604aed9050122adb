"""One tiny trained run (byte tokenizer, d_model 32, 1 layer, 2 steps) shared by this folder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))


def run_module(args, check=True, timeout=300):
  """`python -m args...` from the repository root on one CPU device."""
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("eval_data") / "text.txt"
  rng = np.random.default_rng(0)
  path.write_text("".join(f"def f{i}(x):\n    return x * {rng.integers(100)}\n"
                          for i in range(1500)))
  return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, text_file):
  workdir = tmp_path_factory.mktemp("eval_runs") / "tiny"
  proc = run_module(["train.main", "--config=experiments/quickstart.py:tiny",
                     f"--workdir={workdir}", f"--data={text_file}",
                     "--config.model.max_len=96", "--config.train.steps=2",
                     "--config.train.samples=0", "--config.train.eval_batches=1"])
  assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 2
  return workdir
