"""Run directories and orbax checkpoints.

A run directory is self-describing:
  DIR/config.json      the full Config (written atomically at start)
  DIR/data.json        corpus fingerprint, token counts, tokenizer description
  DIR/tokenizer/       the tokenizer, loadable with train.tokenizer.load_tokenizer
  DIR/checkpoints/N/   orbax checkpoints of the TrainState (async, keep-N)
  DIR/metrics.jsonl    one JSON line per logged step / eval
Orbax writes each checkpoint to a temporary folder and renames it when complete, so an
interrupted save never replaces a good checkpoint.
"""

import json
import os

import jax
import orbax.checkpoint as ocp

from train.config import Config
from train.files import write_json_atomic

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"


def save_config(workdir: str, config: Config) -> None:
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json()))


def load_config(workdir: str) -> Config:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {workdir!r} is not a run directory; pass the --workdir of a "
        "training run (python -m train.main ... --workdir=DIR)")
  with open(path) as f:
    return Config.from_dict(json.load(f))


def checkpoint_manager(workdir: str, keep: int = 3, async_save: bool = True
                       ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores `step` (default: latest) onto the shardings in `abstract_state`."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  if step not in manager.all_steps():
    raise FileNotFoundError(
        f"checkpoint step {step} not in {manager.directory}; available: {manager.all_steps()}")
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except ValueError as e:
    if "do not match" not in str(e):
      raise
    detail = "\n".join(str(e).splitlines()[:6])
    raise ValueError(
        f"checkpoint step {step} in {manager.directory} does not match the parameter tree of "
        f"the model this code builds from the run's config.json (written by another code "
        f"version?); start a new --workdir. Details:\n{detail}") from None


def resolve_checkpoint_path(path: str) -> tuple[str, int | None]:
  """Maps a run dir, its checkpoints dir, or DIR/checkpoints/N to (workdir, step or None)."""
  path = os.path.abspath(path.rstrip("/"))
  base = os.path.basename(path)
  parent = os.path.dirname(path)
  if base.isdigit() and os.path.basename(parent) == CHECKPOINT_DIR:
    return os.path.dirname(parent), int(base)
  if base == CHECKPOINT_DIR:
    return parent, None
  return path, None
