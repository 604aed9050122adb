"""Starting a run: fresh, from a base run (--init_from), or resumed from its own checkpoint.

Order matters for a run directory that must never lie: everything is read and checked
(base run, tokenizer, vocabulary, saved config, checkpoint) before any file of the run
directory is written.
"""

import dataclasses
import json
import os
import shutil
import tempfile

import jax
from absl import logging

from model import store
from model.files import write_json_atomic
from model.tokenizer import load_tokenizer
from train import checkpoint
from train.config import Config
from train.run_data import RunData, build_run_data, data_fingerprint
from train.step import Trainer


@dataclasses.dataclass
class Start:
  config: Config
  data: RunData
  trainer: Trainer
  manager: object
  state: object
  frozen: object
  how: str  # "fresh" | "init_from" | "resumed"


def fit_vocab_to_tokenizer(config: Config, tokenizer_vocab: int) -> Config:
  """Grows model.vocab_size to cover the tokenizer (rounded up to a multiple of 8)."""
  if config.model.vocab_size >= tokenizer_vocab:
    return config
  vocab = -(-tokenizer_vocab // 8) * 8
  logging.info("model.vocab_size %d < tokenizer vocabulary %d: using %d",
               config.model.vocab_size, tokenizer_vocab, vocab)
  return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=vocab))


def _base_model(config: Config):
  """With --init_from: the base run's model config and tokenizer replace this run's."""
  base_dir = config.train.init_from
  if not os.path.isdir(base_dir):
    raise FileNotFoundError(f"--init_from={base_dir!r} is not a directory; pass the "
                            "--workdir of a finished training run")
  run = store.read_run_config(base_dir)
  base_model = run.model_config()
  base_peft = run.peft_config()
  if base_peft.method != "full":
    raise ValueError(f"--init_from={base_dir} holds a {base_peft.method} run; export it to a "
                     "plain run first (python -m infer.export --workdir=... --merge_lora "
                     "--out=...) and start from that")
  if run.quant_config().stored:
    raise ValueError(f"--init_from={base_dir} holds {run.quant_config().scheme} weights, which "
                     "do not train; start from the float run it was quantized from (QAT and "
                     "QLoRA quantize a float base themselves)")
  tokenizer = load_tokenizer(os.path.join(base_dir, store.TOKENIZER_DIR))
  if tokenizer.vocab_size > base_model.vocab_size:
    raise ValueError(
        f"vocabulary mismatch: the tokenizer in {base_dir}/{store.TOKENIZER_DIR} has "
        f"{tokenizer.vocab_size} ids but the model there has vocab_size "
        f"{base_model.vocab_size}; the tokenizer was replaced after training. Restore it, "
        "or start from a run whose tokenizer matches its model")
  runtime = {k: getattr(config.model, k) for k in ("dtype", "remat", "attention_impl")}
  model = dataclasses.replace(base_model, **runtime)
  if config.data.seq_len > model.max_len:
    raise ValueError(f"data.seq_len={config.data.seq_len} exceeds the base model's max_len="
                     f"{model.max_len}; lower --config.data.seq_len")
  logging.info("init_from %s: its model (%s) and tokenizer (%d ids)", base_dir,
               {k: v for k, v in dataclasses.asdict(model).items()
                if k in ("d_model", "n_layers", "n_heads", "vocab_size")}, tokenizer.vocab_size)
  return dataclasses.replace(config, model=model), tokenizer


def _check_same_data(workdir: str, config: Config, fingerprint: dict) -> None:
  """Refuses to resume on other tokens than the checkpoints were trained on."""
  path = os.path.join(workdir, store.DATA_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f).get("resume_fingerprint")
  if not saved:
    return
  changed = [k for k in ("tokenizer", "train_tokens") if saved.get(k) != fingerprint.get(k)]
  if not changed:
    return
  what = " and ".join({"tokenizer": "the tokenizer",
                       "train_tokens": "the training tokens (corpus, --data file or token "
                                       "cache)"}[k] for k in changed)
  if config.train.accept_data_change:
    logging.warning("resuming %s although %s changed (--config.train.accept_data_change)",
                    workdir, what)
    return
  raise ValueError(
      f"{workdir} was trained on other data: {what} changed since its checkpoints were "
      "written. Resume with the same data, start a new --workdir, or pass "
      "--config.train.accept_data_change=true to continue on the new data knowingly")


def _check_resumable(workdir: str, config: Config, tokenizer) -> None:
  if not os.path.exists(os.path.join(workdir, store.CONFIG_FILE)):
    return
  if checkpoint.format_version(workdir) < store.FORMAT_VERSION and store.checkpoint_steps(workdir):
    raise ValueError(
        f"{workdir} was written by an older code version (run-directory format "
        f"{checkpoint.format_version(workdir)}): it decodes (python -m infer.generate) and "
        "can start a new run (--init_from), but training cannot resume in it; pass a new "
        "--workdir")
  saved = checkpoint.load_config(workdir)
  for section in ("model", "peft", "data"):
    if getattr(saved, section) != getattr(config, section):
      raise ValueError(
          f"{workdir} holds a run with a different {section} config; resume with the same "
          "settings or pass a new --workdir")
  if dataclasses.replace(saved.train, accept_data_change=False) != dataclasses.replace(
      config.train, accept_data_change=False):
    logging.warning("resuming %s with changed train settings: the run will not match an "
                    "uninterrupted run of either config", workdir)
  saved_tokenizer_dir = os.path.join(workdir, store.TOKENIZER_DIR)
  if os.path.isdir(saved_tokenizer_dir):
    saved_tokenizer = load_tokenizer(saved_tokenizer_dir)
    if saved_tokenizer.fingerprint != tokenizer.fingerprint:
      raise ValueError(f"vocabulary mismatch: {saved_tokenizer_dir} is not the tokenizer this "
                       "run would use now; resume with the same data and --init_from, or "
                       "pass a new --workdir")


def _save_tokenizer_atomic(tokenizer, directory: str) -> None:
  """Writes the tokenizer to a temporary folder, then swaps it in: an interrupt leaves the
  old tokenizer or the new one, never a mix."""
  parent = os.path.dirname(os.path.abspath(directory))
  tmp = tempfile.mkdtemp(prefix=".tmp-tokenizer-", dir=parent)
  try:
    if os.path.isdir(directory):
      try:
        if load_tokenizer(directory).fingerprint == tokenizer.fingerprint:
          return  # already the run's tokenizer (a resume): nothing to write
      except (OSError, ValueError):
        pass  # unreadable: replace it
    tokenizer.save(tmp)
    if os.path.isdir(directory):
      old = directory + f".old-{os.getpid()}"
      os.replace(directory, old)
      os.replace(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _write_run_files(workdir: str, config: Config, data: RunData) -> None:
  if jax.process_index() != 0:
    return
  checkpoint.save_config(workdir, config)
  write_json_atomic(os.path.join(workdir, store.DATA_FILE), data.info)
  _save_tokenizer_atomic(data.tokenizer, os.path.join(workdir, store.TOKENIZER_DIR))
  if data.template is not None:
    store.write_chat_template(workdir, data.template.to_dict())


def _reference(config: Config, trainer: Trainer):
  """On resume, the frozen reference a full fine-tune started from (DPO, GRPO with KL)."""
  if not trainer.copies_reference:
    return None
  if not config.train.init_from:
    return trainer.init(config.train.seed)[1]["reference"]
  params, _, _ = store.restore_params(config.train.init_from, trainer.abstract_base_params)
  return params


def start_run(config: Config, workdir: str, mesh) -> Start:
  """Builds data, model and state; writes the run files once the state exists."""
  tokenizer = None
  if config.train.init_from:
    config, tokenizer = _base_model(config)
  if config.train.objective == "distill" and config.distill.teacher:  # teacher's token ids
    from train.objectives.distill import (  # pylint: disable=g-import-not-at-top
        adapt_config, teacher_tokenizer)
    tokenizer = teacher_tokenizer(config, tokenizer)
    config = adapt_config(config)
  if config.peft.method == "prompt_tuning" and config.data.kind == "sft" and config.data.pack:
    logging.info("prompt tuning prepends the soft prompt to each row: packing turned off")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, pack=False))
  data = build_run_data(config.data, tokenizer, seed=config.train.seed, rl_config=config.rl,
                        ppo=config.train.objective == "ppo", run_config=config)
  if config.data.kind == "labelled":  # the classifier's outputs come from the labels seen
    from train.data.labelled import fit_label_config  # pylint: disable=g-import-not-at-top
    config = fit_label_config(config, data.info)
  if config.train.objective == "distill" and config.distill.method == "data":
    from train.data.teacher_text import with_teacher_text  # pylint: disable=g-import-not-at-top
    data, write_synthetic = with_teacher_text(config, data, workdir, config.mesh)
  else:
    write_synthetic = lambda: None
  if tokenizer is None:
    config = fit_vocab_to_tokenizer(config, data.tokenizer.vocab_size)
  data.info = dict(data.info, resume_fingerprint=data_fingerprint(
      data.tokenizer, data.train, config.data.data or "embedded"))
  _check_resumable(workdir, config, data.tokenizer)
  if store.checkpoint_steps(workdir):
    _check_same_data(workdir, config, data.info["resume_fingerprint"])
  trainer = Trainer(config, mesh)
  trainer.check_batch_size()
  if store.checkpoint_steps(workdir):
    abstract = trainer.abstract_train_state()
    if hasattr(data.train, "checkpoint_state"):  # RL: the rollout in use, the KL coef
      abstract["rl"] = data.train.abstract_checkpoint_state(config.train.batch_size)
    params, train_state, step = store.restore_train_state(workdir, trainer.abstract_params,
                                                          abstract)
    if "rl" in abstract:
      data.train.restore_checkpoint_state(train_state.pop("rl"))
    state, frozen = trainer.resume(params, train_state, _reference(config, trainer))
    how = "resumed"
    logging.info("resumed from %s at step %d", workdir, step)
  elif config.train.init_from:
    base_params, base_step, n_bytes = store.restore_params(
        config.train.init_from, trainer.abstract_base_params)
    logging.info("init_from %s step %d: read %.2f MB of parameters (no optimizer state)",
                 config.train.init_from, base_step, n_bytes / 1e6)
    state, frozen = trainer.init_from(base_params, config.train.seed)
    how = "init_from"
  else:
    state, frozen = trainer.init(config.train.seed)
    how = "fresh"
  # Only now, with the state restored or built, is anything in the run directory written.
  manager = store.checkpoint_manager(workdir, keep=config.train.keep_checkpoints)
  _write_run_files(workdir, config, data)
  if jax.process_index() == 0:
    write_synthetic()
  return Start(config, data, trainer, manager, state, frozen, how)
