"""Resumable, shardable runner for a list of planned runs (experiments/scaling/shapes.py).

Layout: WORKDIR/runs/<run_id>/ is each run's own run directory (checkpoints, metrics, config,
as train.loop writes them) plus `result.json`, written atomically when the run has finished
and been evaluated. Rerunning skips runs with a result and resumes the others from their
checkpoints (train.loop does that). `shard_index`/`num_shards` select the runs with
index % num_shards == shard_index, so machines sharing WORKDIR (or copying runs/ together
afterwards) split one sweep; `collect_results` gathers whatever is finished.
"""

import csv
import functools
import json
import math
import os
import tempfile
import time
from typing import Callable, Optional, Sequence

from absl import logging

from experiments.scaling.shapes import RunSpec

RUNS_DIR = "runs"
RESULT_FILE = "result.json"
PARTIAL_WALL_FILE = "wall_time_partial.json"
CSV_COLUMNS = ("run_id", "kind", "budget", "shape", "params", "tokens", "loss", "flops",
               "non_embedding_params", "non_embedding_flops", "total_params", "lr",
               "lr_multiplier", "warmup_steps", "steps", "batch_size", "seq_len",
               "train_loss", "tokens_per_s", "wall_time_s", "diverged", "seed")


def run_dir(workdir: str, run_id: str) -> str:
  return os.path.join(workdir, RUNS_DIR, run_id)


def write_json_atomic(path: str, payload) -> None:
  """Temp file in the same folder, then rename: readers never see half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(payload, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def shard_runs(runs: Sequence[RunSpec], shard_index: int = 0, num_shards: int = 1) -> list:
  """The runs this shard owns: index % num_shards == shard_index."""
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"need 0 <= --shard_index ({shard_index}) < --num_shards ({num_shards})")
  return [r for r in runs if r.index % num_shards == shard_index]


def _config_dict(run: RunSpec) -> dict:
  return json.loads(run.config.to_json())


@functools.lru_cache(maxsize=1)
def _default_config() -> dict:
  """The default train config as recorded (built once: every finished run is checked)."""
  from train.config import Config  # pylint: disable=import-outside-toplevel
  return json.loads(Config().to_json())


def same_settings(old, new, defaults) -> bool:
  """Whether a recorded config `old` is `new`, allowing keys added to the config since it was
  recorded when `new` holds their default (`defaults`: the default config, same nesting)."""
  if not (isinstance(old, dict) and isinstance(new, dict)):
    return old == new
  if not set(old) <= set(new):
    return False
  defaults = defaults if isinstance(defaults, dict) else {}
  for key, value in new.items():
    if key not in old:
      if key not in defaults or defaults[key] != value:
        return False
    elif not same_settings(old[key], value, defaults.get(key)):
      return False
  return True


def load_result(workdir: str, run: RunSpec) -> Optional[dict]:
  """The finished run's record, or None; raises if it was made with a different config."""
  path = os.path.join(run_dir(workdir, run.run_id), RESULT_FILE)
  if not os.path.exists(path):
    return None
  result = _read_json(path)
  if not same_settings(result.get("config"), _config_dict(run), _default_config()):
    raise ValueError(
        f"{path} was produced with different settings than this sweep plans for run "
        f"{run.run_id}; rerun with the flags that made it, or use a new --workdir")
  return result


def check_single_pass(runs: Sequence[RunSpec], train_windows: int, train_tokens: int,
                      allow_repeats: bool = False) -> list:
  """Runs whose tokens exceed one pass over the training split; raises unless allow_repeats."""
  over = [r for r in runs if r.steps * r.batch_size > train_windows]
  if not over:
    return []
  names = ", ".join(f"{r.run_id} ({r.tokens / train_tokens:.2f} epochs)" for r in over)
  message = (f"{len(over)} run(s) need more tokens than the training split has "
             f"({train_tokens:,} tokens, {train_windows:,} windows) and would repeat data: "
             f"{names}. Lower --budgets, point --data at a bigger corpus, or pass "
             "--allow_repeated_tokens to train anyway")
  if not allow_repeats:
    raise ValueError(message)
  logging.warning("%s", message)
  return over


def check_eval_windows(runs: Sequence[RunSpec], val_windows: int) -> int:
  """Every run evaluates the same validation windows; they must exist."""
  counts = {r.batch_size * r.config.train.eval_batches for r in runs}
  if len(counts) != 1:
    raise ValueError(f"runs would evaluate different numbers of validation windows: {counts}")
  need = counts.pop()
  if need > val_windows:
    raise ValueError(f"every run evaluates {need} validation windows but the validation split "
                     f"has {val_windows}; lower --eval_windows or raise data.val_fraction")
  return need


def _default_train_fn(config, workdir):
  from train.loop import train
  return train(config, workdir)


def _is_divergence(error: Exception) -> bool:
  from train.loop import TrainingDiverged
  return isinstance(error, TrainingDiverged)


def _result(run: RunSpec, summary: dict, wall_time_s: float, diverged: bool) -> dict:
  result = run.record()
  loss = summary.get("val_loss")
  result.update(
      loss=loss if loss is not None and math.isfinite(loss) else None,
      train_loss=summary.get("train_loss"), val_tokens=summary.get("val_tokens"),
      tokens_per_s=summary.get("tokens_per_s"), wall_time_s=wall_time_s, diverged=diverged,
      config=_config_dict(run))
  return result


def run_one(run: RunSpec, workdir: str, train_fn: Callable) -> Optional[dict]:
  """Trains (or resumes) one run; returns its result, or None if it stopped early."""
  directory = run_dir(workdir, run.run_id)
  partial_path = os.path.join(directory, PARTIAL_WALL_FILE)
  before = _read_json(partial_path)["seconds"] if os.path.exists(partial_path) else 0.0
  start = time.perf_counter()
  diverged = False
  try:
    summary = train_fn(run.config, directory)
  except Exception as e:  # a diverged run is finished: record it without a loss
    if not _is_divergence(e):
      raise
    logging.warning("run %s diverged: %s", run.run_id, e)
    summary, diverged = {}, True
  wall = before + time.perf_counter() - start
  if summary.get("stopped_early"):
    write_json_atomic(partial_path, {"seconds": wall})
    return None
  if not diverged:
    if summary.get("tokens") != run.tokens:
      raise RuntimeError(f"run {run.run_id} trained {summary.get('tokens')} tokens, planned "
                         f"{run.tokens}; the run directory {directory} holds another run")
    if summary.get("flops_per_token") not in (None, run.flops_per_token):
      raise RuntimeError(f"run {run.run_id}: training counted {summary['flops_per_token']} "
                         f"FLOPs/token, the plan {run.flops_per_token} (vocab padded?)")
  result = _result(run, summary, wall, diverged)
  write_json_atomic(os.path.join(directory, RESULT_FILE), result)
  return result


def run_sweep(runs: Sequence[RunSpec], workdir: str, *, shard_index: int = 0,
              num_shards: int = 1, train_fn: Optional[Callable] = None) -> dict:
  """Trains this shard's unfinished runs in order.

  Returns {"trained": [...], "skipped": [...], "interrupted": run_id or None}. A run that
  stops early (SIGTERM/SIGINT: train saves a checkpoint) ends the sweep; rerun to resume.
  """
  train_fn = train_fn or _default_train_fn
  mine = shard_runs(runs, shard_index, num_shards)
  status = {"trained": [], "skipped": [], "interrupted": None}
  for i, run in enumerate(mine):
    if load_result(workdir, run) is not None:
      status["skipped"].append(run.run_id)
      continue
    logging.info("sweep: run %d/%d %s (N=%.3g, D=%.3g, %d steps, lr %.2e)", i + 1, len(mine),
                 run.run_id, run.params, run.tokens, run.steps, run.config.train.learning_rate)
    result = run_one(run, workdir, train_fn)
    if result is None:
      status["interrupted"] = run.run_id
      logging.warning("sweep stopped during %s; rerun the same command to resume", run.run_id)
      break
    status["trained"].append(run.run_id)
    logging.info("sweep: %s held-out loss %s in %.0f s", run.run_id, result["loss"],
                 result["wall_time_s"])
  return status


def collect_results(workdir: str, runs: Sequence[RunSpec]) -> tuple[list, list]:
  """(results of finished runs in plan order, run_ids still missing)."""
  results, missing = [], []
  for run in runs:
    result = load_result(workdir, run)
    if result is None:
      missing.append(run.run_id)
    else:
      results.append(result)
  return results, missing


def csv_row(result: dict) -> dict:
  row = {k: result.get(k) for k in CSV_COLUMNS}
  row["lr"] = result.get("learning_rate")
  return row


def write_results_csv(path: str, results: Sequence[dict]) -> str:
  """One row per finished run with CSV_COLUMNS (loss empty for diverged runs)."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    for r in results:
      writer.writerow({k: "" if v is None else v for k, v in csv_row(r).items()})
  return path


def analysis_rows(results: Sequence[dict], kind: str = "isoflop") -> list:
  """The columns experiments.scaling.analyze reads, for finished runs of one kind."""
  keys = ("params", "tokens", "loss", "flops", "budget", "non_embedding_params",
          "non_embedding_flops")
  return [dict({k: r[k] for k in keys}, seed=r.get("seed", 0)) for r in results
          if r["kind"] == kind]


# ----------------------------------------------------------------------------- wall time


def measure_speed(config, min_seconds: float = 2.0, min_steps: int = 3) -> dict:
  """Compile seconds and steady tokens/s of one config on synthetic tokens (no data, no I/O),
  timing at least `min_steps` steps and `min_seconds` seconds."""
  import jax
  import numpy as np

  from model import sharding
  from train.step import Trainer
  start = time.perf_counter()
  trainer = Trainer(config, sharding.make_mesh(config.mesh.as_dict()))
  state, frozen = trainer.init(0)
  rows = (config.train.batch_size // jax.process_count(), config.data.seq_len)
  batch = trainer.global_batch({"inputs": np.zeros(rows, np.int32),
                                "targets": np.zeros(rows, np.int32)})
  state, _ = trainer.train_step(state, frozen, batch)
  jax.block_until_ready(state)
  trainer.eval_step(state.params, frozen, batch)
  compiled = time.perf_counter()
  steps = 0
  while steps < min_steps or time.perf_counter() - compiled < min_seconds:
    for _ in range(max(1, steps)):
      state, _ = trainer.train_step(state, frozen, batch)
    jax.block_until_ready(state)
    steps += max(1, steps)
  elapsed = time.perf_counter() - compiled
  tokens = steps * config.train.batch_size * config.data.seq_len
  return {"compile_s": compiled - start, "tokens_per_s": tokens / elapsed}


def estimate_wall_time(runs: Sequence[RunSpec], speeds: dict, extra_per_run_s: float = 2.0
                       ) -> dict:
  """Seconds per run from measured speeds {run_id: measure_speed(...)} of a few runs.

  Achieved FLOP/s and compile time are interpolated in log N between the measured runs
  (constant beyond them); `extra_per_run_s` covers data loading, checkpoints and the eval.
  """
  import numpy as np
  by_id = {r.run_id: r for r in runs}
  points = sorted((by_id[k].params, v["tokens_per_s"] * by_id[k].flops_per_token,
                   v["compile_s"]) for k, v in speeds.items())
  log_n = np.log([p[0] for p in points])
  per_run = {}
  for r in runs:
    x = math.log(r.params)
    flop_rate = math.exp(np.interp(x, log_n, np.log([p[1] for p in points])))
    compile_s = float(np.interp(x, log_n, [p[2] for p in points]))
    eval_flops = r.config.train.eval_batches * r.batch_size * r.config.data.seq_len * (
        r.flops_per_token / 3)
    per_run[r.run_id] = compile_s + extra_per_run_s + (r.flops + eval_flops) / flop_rate
  return {"total_s": sum(per_run.values()), "per_run_s": per_run}
