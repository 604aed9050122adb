"""The saved-model format: one self-describing run directory, read and written only here.

  DIR/config.json          {"format_version": 2, "model": ..., "peft": ..., ["quant": ...],
                            <train sections>}
  DIR/data.json            corpus / data-set description
  DIR/tokenizer/           model.tokenizer.load_tokenizer reads it
  DIR/chat_template.json   present for fine-tuned runs; decoding wraps prompts with it
  DIR/checkpoints/N/params/       the model parameters: all that decoding ever reads
  DIR/checkpoints/N/train_state/  step and optimizer state (training resumes from both)
  DIR/metrics.jsonl        one JSON line per logged step / evaluation

Format 1 (before params-only checkpoints) kept the whole train state in one item
(`checkpoints/N/default`); it still loads for decoding and --init_from (reading the whole
state once, with a warning) but cannot be resumed. A newer format or an unknown key is a
clear error, never silently dropped.
"""

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp
from absl import logging

from model.config import ModelConfig, strict_from_dict
from model.files import write_json_atomic

FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
TOKENIZER_DIR = "tokenizer"
CHAT_TEMPLATE_FILE = "chat_template.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
PARAMS_ITEM = "params"
TRAIN_STATE_ITEM = "train_state"


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """config.json as read: its format version and its sections as plain dicts."""
  path: str
  version: int
  sections: dict

  def section(self, name: str) -> dict:
    return dict(self.sections.get(name, {}))

  def model_config(self) -> ModelConfig:
    return strict_from_dict(ModelConfig, self.section("model"), f"{self.path} [model]")

  @property
  def head(self) -> str:
    """What the model outputs: "lm" (next-token logits) or "reward" (a scalar per sequence)."""
    return str(self.sections.get("head", "lm"))

  def peft_config(self):
    from model.peft import PeftConfig  # pylint: disable=g-import-not-at-top
    return strict_from_dict(PeftConfig, self.section("peft"), f"{self.path} [peft]")

  def quant_config(self):
    """How the stored projections are quantized: the quant section (absent = float), with
    QLoRA's peft.base_quant setting the scheme of the frozen base."""
    from model import quant  # pylint: disable=g-import-not-at-top
    config = strict_from_dict(quant.QuantConfig, self.section("quant"), f"{self.path} [quant]")
    return quant.effective(config, self.section("peft").get("base_quant", "none"))


def write_run_config(workdir: str, sections: dict) -> None:
  """Writes config.json atomically with the current format version."""
  write_json_atomic(os.path.join(workdir, CONFIG_FILE),
                    {"format_version": FORMAT_VERSION, **sections})


def read_run_config(workdir: str) -> RunConfig:
  """Reads config.json; a missing file, a newer format or bad JSON is a clear error."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {workdir!r} is not a run directory; pass the --workdir of a "
        "training run (python -m train.main ... --workdir=DIR)")
  try:
    with open(path) as f:
      payload = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); restore it or start a new run") from None
  version = payload.pop("format_version", 1)
  if not isinstance(version, int) or version > FORMAT_VERSION:
    raise ValueError(
        f"{path} has format_version {version!r}, newer than this code reads "
        f"({FORMAT_VERSION}); update jaxlm (git pull) to load it")
  return RunConfig(path=path, version=version, sections=payload)


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def checkpoint_manager(workdir: str, keep: int = 3, async_save: bool = True,
                       create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=create, enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save_checkpoint(manager: ocp.CheckpointManager, step: int, params, train_state=None,
                    force: bool = False) -> bool:
  """Saves params (and, when given, the train state) as separate items of checkpoint `step`."""
  items = {PARAMS_ITEM: ocp.args.StandardSave(params)}
  if train_state is not None:
    items[TRAIN_STATE_ITEM] = ocp.args.StandardSave(train_state)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def checkpoint_steps(workdir: str) -> list[int]:
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  manager = checkpoint_manager(workdir, async_save=False, create=False)
  steps = list(manager.all_steps())
  manager.close()
  return sorted(steps)


def dir_bytes(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


def restore_params(workdir: str, abstract_params, step: int | None = None,
                   version: int | None = None):
  """Restores only the parameters of checkpoint `step` (default: the newest intact one)
  onto the shardings of `abstract_params`; returns (params, step, bytes_on_disk_read)."""
  version = read_run_config(workdir).version if version is None else version

  def restore_one(manager, candidate):
    if version == 1:
      return _restore_legacy_params(manager, candidate, abstract_params)
    args = ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(abstract_params)})
    return manager.restore(candidate, args=args)[PARAMS_ITEM]

  params, step = restore_newest_intact(workdir, restore_one, step)
  step_dir = os.path.join(checkpoint_dir(workdir), str(step))
  item_dir = step_dir if version == 1 else os.path.join(step_dir, PARAMS_ITEM)
  return params, step, dir_bytes(item_dir)


def restore_train_state(workdir: str, abstract_params, abstract_train_state,
                        move_damaged: bool = True):
  """Restores (params, train_state, step) of the newest intact checkpoint, for resuming.

  Damaged newer checkpoints are moved to DIR/damaged_checkpoints/ (kept, not deleted), so
  that training can write those steps again; the caller holds the run's lock.
  """
  args = ocp.args.Composite(**{
      PARAMS_ITEM: ocp.args.StandardRestore(abstract_params),
      TRAIN_STATE_ITEM: ocp.args.StandardRestore(abstract_train_state)})
  restored, step = restore_newest_intact(
      workdir, lambda manager, candidate: manager.restore(candidate, args=args),
      move_damaged=move_damaged)
  return restored[PARAMS_ITEM], restored[TRAIN_STATE_ITEM], step


def _is_mismatch(error: Exception) -> bool:
  return isinstance(error, ValueError) and "do not match" in str(error)


def _short(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def restore_newest_intact(workdir: str, restore_one, step: int | None = None,
                          move_damaged: bool = False, attempts: int = 3):
  """Runs `restore_one(manager, step)` on `step`, or on the newest checkpoint that restores.

  A damaged checkpoint (truncated or missing files) is skipped with a warning naming it; a
  step that disappears while being read (an older one deleted by a running trainer) makes
  the listing start again. A parameter tree that does not match the model is not damage:
  it is raised at once. An explicit `step` that fails is a clear error.
  """
  directory = checkpoint_dir(workdir)
  for _ in range(attempts):
    steps = checkpoint_steps(workdir)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {directory}; train first or pass a run "
                              "directory that has one")
    if step is not None and step not in steps:
      raise FileNotFoundError(f"checkpoint step {step} not in {directory}; available: {steps}")
    vanished, damaged = False, []
    for candidate in ([step] if step is not None else reversed(steps)):
      manager = checkpoint_manager(workdir, async_save=False, create=False)
      try:
        restored = restore_one(manager, candidate)
        if move_damaged:
          for bad in damaged:
            _move_aside(workdir, bad)
        return restored, candidate
      except Exception as e:  # pylint: disable=broad-except
        if _is_mismatch(e):
          raise _mismatch_error(candidate, directory, e) from None
        if not os.path.exists(os.path.join(directory, str(candidate))):
          vanished = True  # deleted under us: list again
          break
        if step is not None:
          raise ValueError(
              f"checkpoint step {step} in {directory} is damaged or incomplete ({_short(e)}); "
              f"pick another step (available: {steps}) or leave the step out to use the "
              "newest intact checkpoint") from None
        logging.warning("checkpoint step %d in %s is damaged (%s); falling back to an older "
                        "one", candidate, directory, _short(e))
        damaged.append(candidate)
      finally:
        manager.close()
    if not vanished:
      raise ValueError(f"no intact checkpoint in {directory}: steps {damaged} are damaged; "
                       "restore them from a backup or start a new --workdir")
  raise FileNotFoundError(f"checkpoints in {directory} kept disappearing while being read "
                          "(is a trainer deleting them?); try again")


def _move_aside(workdir: str, step: int) -> str:
  """Moves a damaged step out of the checkpoints folder (kept for inspection)."""
  target_root = os.path.join(workdir, "damaged_checkpoints")
  os.makedirs(target_root, exist_ok=True)
  target = os.path.join(target_root, f"{step}")
  suffix = 0
  while os.path.exists(target):
    suffix += 1
    target = os.path.join(target_root, f"{step}.{suffix}")
  os.replace(os.path.join(checkpoint_dir(workdir), str(step)), target)
  logging.warning("moved damaged checkpoint step %d to %s", step, target)
  return target


def _mismatch_error(step, directory, error) -> ValueError:
  detail = "\n".join(str(error).splitlines()[:6])
  return ValueError(
      f"checkpoint step {step} in {directory} does not match the parameter tree of the model "
      f"this code builds from the run's config.json (written by another code version?); start "
      f"a new --workdir. Details:\n{detail}")


def _restore_legacy_params(manager, step: int, abstract_params):
  """Format 1: the whole train state in one item; keeps its params, renamed to today's paths."""
  logging.warning("checkpoint %d in %s is format 1 (train state in one item): reading the whole "
                  "state once to take its parameters", step, manager.directory)
  state = manager.restore(step, args=ocp.args.StandardRestore())
  params = upgrade_v1_params(state["params"], abstract_params)
  shardings = jax.tree.map(lambda a: a.sharding, abstract_params)
  return jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)


def upgrade_v1_params(old: dict, abstract: dict, path: str = "") -> dict:
  """Maps format-1 parameter paths onto today's: a projection's weight `.../query` became
  `.../query/kernel` when every projection became one module."""
  out = {}
  for key, want in abstract.items():
    where = f"{path}/{key}"
    if isinstance(want, dict):
      if key in old and isinstance(old[key], dict):
        out[key] = upgrade_v1_params(old[key], want, where)
      elif set(want) == {"kernel"} and key in old:
        out[key] = {"kernel": old[key]}
      else:
        raise ValueError(f"format-1 checkpoint has no parameter {where}; it cannot be loaded "
                         "by this code version")
    elif key in old and not isinstance(old[key], dict):
      if tuple(old[key].shape) != tuple(want.shape):
        raise ValueError(f"format-1 parameter {where} has shape {old[key].shape}, expected "
                         f"{want.shape}")
      out[key] = old[key]
    else:
      raise ValueError(f"format-1 checkpoint has no parameter {where}; it cannot be loaded by "
                       "this code version")
  return out


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


def write_chat_template(workdir: str, template_dict: dict) -> None:
  write_json_atomic(os.path.join(workdir, CHAT_TEMPLATE_FILE), template_dict)


def read_chat_template_dict(workdir: str) -> dict | None:
  path = os.path.join(workdir, CHAT_TEMPLATE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
