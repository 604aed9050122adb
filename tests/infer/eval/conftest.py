"""One tiny trained run (byte tokenizer, d_model 32, 1 layer, 2 steps) shared by this folder."""

import json

import numpy as np
import pytest

from tests.cli_runner import run_module


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
