"""The training loop: data, init / init_from / resume, logging, evaluation, checkpoints,
signals, divergence."""

import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from model import flops, sharding, store
from model.run_lock import RunLock
from train import checkpoint, eval_set, hardware, run_setup
from train.config import Config
from train.step import Trainer


class TrainingDiverged(RuntimeError):
  """The loss became NaN or inf; the last checkpoint on disk is still the last good one."""


class _StopFlag:
  """Set by SIGTERM/SIGINT; the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    if self.signal is not None:  # second signal: give up at once
      raise KeyboardInterrupt
    self.signal = signum
    logging.warning("received signal %d: saving a checkpoint and stopping", signum)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def peak_flops_per_device(config: Config) -> tuple[float, str]:
  """The MFU denominator: configured, datasheet, or a matmul measured now (CPU)."""
  if config.train.peak_flops > 0:
    return config.train.peak_flops, "configured"
  peak = hardware.datasheet_peak_flops()
  if peak:
    return peak, "datasheet bf16"
  return hardware.measure_matmul_flops(), "measured matmul"


def evaluate(trainer: Trainer, state, frozen, val_ds, config: Config) -> dict:
  """Held-out loss averaged per target token over the same validation batches every time.

  RL rollouts have no fixed validation batches (val_ds None): then only task eval runs."""
  if val_ds is None:
    return {}
  loss_sum, count = 0.0, 0.0
  extra = {}  # preference objectives: held-out reward accuracy, margin, ...
  n_proc, proc = jax.process_count(), jax.process_index()
  for batch in val_ds.eval_batches(config.train.batch_size, config.train.eval_batches):
    rows = config.train.batch_size // n_proc
    local = {k: np.asarray(v[proc * rows:(proc + 1) * rows]) for k, v in batch.items()}
    _, weight_sum, metric_sums = trainer.eval_step(state.params, frozen,
                                                   trainer.global_batch(local))
    loss_sum += float(metric_sums["ce_loss"])
    count += float(weight_sum)
    for k in _VAL_EXTRA_METRICS.intersection(metric_sums):
      extra[f"val_{k}"] = extra.get(f"val_{k}", 0.0) + float(metric_sums[k])
  loss = loss_sum / max(count, 1.0)
  extra = {k: v / max(count, 1.0) for k, v in extra.items()}
  return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0)), "val_tokens": count,
          **extra}


_VAL_EXTRA_METRICS = frozenset(("reward_accuracy", "reward_margin", "chosen_reward",
                                "rejected_reward", "preference_loss", "accuracy",
                                "squared_error"))


def _count(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def _log_trainable(trainer: Trainer, state, frozen) -> dict:
  """Trainable parameters (count, % of the model) and optimizer-state bytes, at start."""
  trainable = _count(state.params)
  total = trainable + _count(frozen.get("model", {}))  # not the reference copy
  opt_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.opt_state))
  logging.info("peft %s: %s trainable of %s parameters (%.4f%%); optimizer state %.2f MB",
               trainer.config.peft.method, f"{trainable:,}", f"{total:,}",
               100.0 * trainable / max(total, 1), opt_bytes / 1e6)
  return {"trainable_params": trainable, "total_params": total,
          "optimizer_state_bytes": int(opt_bytes)}


def _task_evaluator(config: Config, data, trainer: Trainer):
  """Exact match on held-out tasks (fine-tuning data only), or None."""
  if not data.heldout or config.train.task_eval_examples <= 0:
    return None
  from infer.decode import Decoder  # pylint: disable=g-import-not-at-top
  from train import task_eval  # pylint: disable=g-import-not-at-top
  rows = task_eval.select_rows(data.heldout, config.train.task_eval_examples)
  decoder = Decoder(config.model, trainer.mesh, config.peft, trainer.config.model_quant)

  def run(state, frozen) -> dict:
    start = time.perf_counter()
    result = task_eval.evaluate_tasks(decoder, trainer.full_params(state, frozen),
                                      data.tokenizer, data.template, rows,
                                      config.train.task_eval_tokens)
    logging.info("task exact match %.3f over %d held-out examples (%.1fs): %s",
                 result["exact_match"], len(rows), time.perf_counter() - start,
                 " ".join(f"{k.split('/')[-1]}={v:.2f}" for k, v in result.items() if "/" in k))
    return result
  return run


class _MetricsLog:
  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, checkpoint.METRICS_FILE)
    self.enabled = jax.process_index() == 0

  def write(self, record: dict) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(config: Config, workdir: str, stop_at_step: int | None = None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns a summary with the held-out loss.

  `stop_at_step` ends this invocation early (with a checkpoint) at that step, e.g. to
  split a long run over several jobs; rerunning continues on the same schedule. The run
  directory is locked for the duration (model/run_lock.py): a second trainer on the same
  directory is refused instead of interleaving checkpoints and metrics.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} is a file, not a directory; pass a directory path")
  os.makedirs(workdir, exist_ok=True)
  with RunLock(workdir, "train", enabled=jax.process_index() == 0):
    return _train(config, workdir, stop_at_step)


def _train(config: Config, workdir: str, stop_at_step: int | None) -> dict:
  mesh = sharding.make_mesh(config.mesh.as_dict())
  start = run_setup.start_run(config, workdir, mesh)
  config, trainer, manager = start.config, start.trainer, start.manager
  state, frozen = start.state, start.frozen
  train_ds, val_ds = start.data.train, start.data.val
  start_step = int(state.step)
  if stop_at_step is not None and stop_at_step <= start_step:
    logging.warning("--stop_at_step=%d is not after the current step %d: nothing to do",
                    stop_at_step, start_step)
    manager.close()
    return {"start_step": start_step, "step": start_step, "stopped_early": True,
            "workdir": workdir}
  param_info = _log_trainable(trainer, state, frozen)
  task_eval = _task_evaluator(config, start.data, trainer)
  set_eval = eval_set.make_evaluator(config, start.data, trainer)

  train_config = config.train
  seq_len = config.data.seq_len
  tokens_per_step = train_config.batch_size * seq_len
  flops_per_token = flops.flops_per_token(config.model, seq_len, "exact",
                                          source_len=config.data.source_len)
  peak_per_device, peak_source = peak_flops_per_device(config)
  peak_total = peak_per_device * jax.device_count()
  counts = flops.param_counts(config.model)
  logging.info("model: %s parameters (%s non-embedding, %s active); mesh %s; %d tokens/step; "
               "%.3g FLOPs/token; MFU peak %.3g FLOP/s (%s)",
               f"{counts['total']:,}", f"{counts['non_embedding']:,}", f"{counts['active']:,}",
               dict(mesh.shape), tokens_per_step, flops_per_token, peak_total, peak_source)
  if train_ds.tokens_per_epoch < tokens_per_step * (train_config.steps - start_step):
    logging.warning("the run needs %.2f epochs of the training tokens: tokens will repeat",
                    tokens_per_step * train_config.steps / train_ds.tokens_per_epoch)

  metrics_log = _MetricsLog(workdir)
  summary = {"start_step": start_step, "peft": config.peft.method}
  last_saved = manager.latest_step()
  interval_start, interval_steps = None, 0
  any_nonfinite = jnp.zeros((), bool)
  step = start_step
  with _StopFlag() as stop:
    while step < train_config.steps:
      if hasattr(train_ds, "set_policy"):  # RL rollouts sample from the current params
        train_ds.set_policy(trainer, state, frozen)
      local = train_ds.batch(train_config.seed, step, train_config.batch_size,
                             jax.process_index(), jax.process_count())
      state, metrics = trainer.train_step(state, frozen, trainer.global_batch(local))
      any_nonfinite = any_nonfinite | ~metrics["finite"]
      step += 1
      if interval_start is None:  # the first step compiles: time from its end
        jax.block_until_ready(state)
        interval_start, interval_steps = time.perf_counter(), 0
      else:
        interval_steps += 1
      last = step == train_config.steps
      if stop_at_step is not None and step >= stop_at_step and not last:
        stop.signal = stop.signal or "stop_at_step"
      if step % train_config.log_every == 0 or last or stop.signal:
        metrics = jax.device_get(metrics)
        if bool(any_nonfinite):
          raise TrainingDiverged(
              f"loss became NaN/inf by step {step}; the last good checkpoint "
              f"(step {last_saved}) in {workdir} is intact. Lower --config.train.learning_rate, "
              "raise warmup_steps or set grad_clip, then resume or start a new --workdir")
        elapsed = time.perf_counter() - interval_start
        tokens_per_s = interval_steps * tokens_per_step / elapsed if interval_steps else 0.0
        record = {k: float(v) for k, v in metrics.items() if k != "finite"}
        record.update(step=step, tokens_per_s=tokens_per_s,
                      perplexity=math.exp(min(record["ce_loss"], 50.0)),
                      mfu=flops.mfu(tokens_per_s, flops_per_token, peak_total))
        eta = (train_config.steps - step) * tokens_per_step / tokens_per_s if tokens_per_s else 0
        logging.info("step %d/%d loss %.4f ppl %.2f grad_norm %.3f lr %.2e | %.0f tokens/s "
                     "MFU %.1f%% | ETA %.0fs", step, train_config.steps, record["loss"],
                     record["perplexity"], record["grad_norm"],
                     record["learning_rate"], tokens_per_s, 100 * record["mfu"], eta)
        if "moe_load_balance_loss" in record:
          logging.info("  moe: load_balance %.4f z_loss %.4f dropped %.2f%% load_cv %.3f",
                       record["moe_load_balance_loss"], record["moe_router_z_loss"],
                       100 * record["moe_drop_fraction"], record["moe_expert_load_cv"])
        metrics_log.write(record)
        summary.update(train_loss=record["loss"], tokens_per_s=tokens_per_s, mfu=record["mfu"])
        interval_start, interval_steps = time.perf_counter(), 0
      if train_config.eval_every and (step % train_config.eval_every == 0) and not last:
        eval_metrics = evaluate(trainer, state, frozen, val_ds, config)
        if eval_metrics:
          logging.info("step %d held-out loss %.4f perplexity %.2f", step,
                       eval_metrics["val_loss"], eval_metrics["val_perplexity"])
        if task_eval:
          eval_metrics.update(task_eval(state, frozen))
        if set_eval:
          eval_metrics.update(set_eval(state, frozen))
        metrics_log.write(dict(eval_metrics, step=step))
        interval_start, interval_steps = time.perf_counter(), 0
      if step % train_config.checkpoint_every == 0 or last or stop.signal:
        if bool(any_nonfinite):
          raise TrainingDiverged(f"loss became NaN/inf by step {step}; not saving. The last good "
                                 f"checkpoint (step {last_saved}) is intact.")
        item = trainer.train_state_item(state)
        if hasattr(train_ds, "checkpoint_state"):  # RL: the rollout in use, the KL coef
          item = dict(item, rl=train_ds.checkpoint_state(train_config.batch_size))
        store.save_checkpoint(manager, step, trainer.full_params(state, frozen), item,
                              force=True)
        last_saved = step
      if stop.signal:
        logging.warning("stopped (%s) at step %d; rerun the same command to resume",
                        stop.signal, step)
        break
  manager.wait_until_finished()
  manager.close()
  summary["stopped_early"] = step < train_config.steps
  summary["step"] = step
  if step >= train_config.steps:
    eval_metrics = evaluate(trainer, state, frozen, val_ds, config)
    if eval_metrics:
      logging.info("final held-out loss %.4f perplexity %.2f over %d tokens",
                   eval_metrics["val_loss"], eval_metrics["val_perplexity"],
                   eval_metrics["val_tokens"])
    if task_eval:
      eval_metrics.update(task_eval(state, frozen))
    if set_eval:
      eval_metrics.update(set_eval(state, frozen))
    metrics_log.write(dict(eval_metrics, step=step, final=True))
    summary.update(eval_metrics)
  summary.update(param_info, how=start.how)
  summary.update(params=counts["total"], flops_per_token=flops_per_token,
                 tokens=step * tokens_per_step, workdir=workdir)
  return summary
