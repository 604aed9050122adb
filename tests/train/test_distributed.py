"""Two `jax.distributed` processes on localhost (CPU, gloo) match one process on 2 devices.

Both runs use the tiny quickstart config on a user text file with an fsdp=2 mesh, so the
parameters, optimizer state and batch are split across the two processes and every
checkpoint has shards written by both. The two-process run also stops at step 4 and is
resumed, which restores those shards. The single-process run goes straight to the end.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from infer.loading import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 300
MESH = ["--config.mesh.data=1", "--config.mesh.fsdp=2"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, data, devices: int, extra=(), process_args=(), tag="run"):
  """Starts one train.main process; stdout/stderr go to files next to the workdir."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(f"--xla_force_host_platform_device_count={devices} "
                        "--xla_backend_optimization_level=0"))  # compiles 3-4x faster
  args = [sys.executable, "-m", "train.main", "--config=experiments/quickstart.py:tiny",
          f"--workdir={workdir}", f"--data={data}", *MESH, *extra, *process_args]
  log = f"{workdir}.{tag}"
  with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
  proc.log = log
  return proc


def _finish(procs) -> list[dict]:
  """Waits for all processes, killing every one as soon as one fails; returns the summaries."""
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.poll() not in (None, 0)]
      if failed or time.monotonic() > deadline:
        culprit = failed[0] if failed else procs[0]
        with open(f"{culprit.log}.err") as f:
          raise AssertionError(f"{culprit.args} failed ({culprit.poll()}, or timed out after "
                               f"{TIMEOUT_S} s):\n{f.read()[-4000:]}")
      time.sleep(0.2)
    for p in procs:
      if p.returncode:
        with open(f"{p.log}.err") as f:
          raise AssertionError(f"{p.args} failed ({p.returncode}):\n{f.read()[-4000:]}")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  summaries = []
  for p in procs:
    with open(f"{p.log}.out") as f:
      summaries.append(json.loads(f.read().strip().splitlines()[-1]))
  return summaries


def _launch_pair(workdir, data, extra=(), tag="p"):
  address = f"localhost:{_free_port()}"
  return [_launch(workdir, data, 1, extra,
                  [f"--coordinator_address={address}", "--num_processes=2",
                   f"--process_id={i}"], tag=f"{tag}{i}") for i in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("distributed")
  data = root / "mine.txt"
  rng = np.random.default_rng(0)
  data.write_text("".join(f"def f{i}(x):\n    return x * {rng.integers(100)}\n"
                          for i in range(3000)))
  single = _launch(root / "single", data, 2)
  pair = _launch_pair(root / "multi", data, ["--stop_at_step=4"])
  first = _finish(pair + [single])
  resumed = _finish(_launch_pair(root / "multi", data, tag="resumed"))
  return dict(root=root, first=first[:2], single=first[2], resumed=resumed)


@pytest.mark.slow
def test_two_processes_match_one_process_on_two_devices(runs):
  single, resumed = runs["single"], runs["resumed"]
  assert all(s["stopped_early"] and s["step"] == 4 for s in runs["first"])
  assert [s["start_step"] for s in resumed] == [4, 4]
  assert resumed[0] == {**resumed[1], "mfu": resumed[0]["mfu"],
                        "tokens_per_s": resumed[0]["tokens_per_s"]}
  for summary in resumed:
    assert summary["step"] == single["step"] == 6
    assert summary["val_tokens"] == single["val_tokens"]
    np.testing.assert_allclose(summary["val_loss"], single["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(summary["train_loss"], single["train_loss"], rtol=1e-5)


@pytest.mark.slow
def test_each_process_measures_its_own_device(runs):
  """The MFU denominator is a matmul timed on a local device (not process 0's)."""
  mfu = [s["mfu"] for s in runs["first"]]
  assert min(mfu) > 0 and max(mfu) / min(mfu) < 20, mfu


@pytest.mark.slow
def test_checkpoints_written_by_two_processes_hold_the_same_params(runs):
  single = load_model(str(runs["root"] / "single"))
  multi = load_model(str(runs["root"] / "multi"))
  assert single.step == multi.step == 6
  leaves_single, leaves_multi = (jax.tree.leaves(jax.device_get(m.params))
                                 for m in (single, multi))
  assert len(leaves_single) == len(leaves_multi)
  for a, b in zip(leaves_single, leaves_multi):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
