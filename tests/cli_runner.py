"""Runs a module's command line the way a user would, for the end-to-end tests."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(args, check=True, timeout=600):
  """`python -m args...` from the repository root on one CPU device; raises with the tail
  of stderr when `check` and the command fails."""
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def last_json_line(proc) -> dict:
  """The JSON summary a training or experiment command prints last."""
  return json.loads(proc.stdout.strip().splitlines()[-1])
