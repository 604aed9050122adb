r"""Chinchilla IsoFLOP sweep on the embedded corpus: train, fit, report.

  python -m experiments.chinchilla --preset=smoke|cpu|gpu --workdir=DIR

trains every run of the preset's sweep (WORKDIR/runs/<id>, resumable; rerun the same command
after an interruption), then fits the three Chinchilla approaches and writes report.md, PNG
plots, results.csv (every run) and runs.csv / analysis.json (the fitted runs) into DIR.

Presets: smoke (2-3 CPU minutes, exercises every step, meaningless numbers), cpu (~35 min on
2 idle CPU cores, byte tokenizer, 1.5 decades of compute, 2 seeds on the 3 smallest
budgets), gpu (one H100/H200 in ~20 min, bf16; its budgets need far more than the embedded
corpus's ~12M tokens: pass --data=YOUR_CORPUS). Flags override the
budgets, model grid, tokenizer, sequence length and schedule, e.g.
  --budgets=1e11,3e11,1e12 --d_models=32,64,96,128 --seq_len=256 --lr_base=2e-3

--seeds=K trains every point with K seeds (averaged; the bootstrap redraws them). --predict=4,16
then trains the fit's compute-optimal model at 4x and 16x the largest budget plus one run
mis-sized by --mis_size, and reports predicted vs achieved loss (experiments/scaling/
extrapolate.py); rerunning skips finished runs.

Several machines: --shard_index=i --num_shards=k trains runs with index % k == i; once all
shards are done (shared DIR, or runs/ copied together) --analyze_only writes the report.
Design conventions (FLOP counting, LR rule, warmup) are in experiments/scaling/shapes.py.
"""

import dataclasses
import json
import os
import sys
import time

from absl import app, flags, logging

from experiments.scaling import shapes as shapes_lib
from experiments.scaling import sweep as sweep_lib
from experiments.scaling.shapes import SweepSpec
from experiments.scaling.sweep_report import write_chinchilla_report
from model.config import ModelConfig
from train.config import DataConfig

PRESETS = ("smoke", "cpu", "gpu")
# cpu preset: 1.5 decades of compute, 7 widths per budget from this grid (see chinchilla_preset).
CPU_BUDGETS = (7.5e10, 1.8e11, 4.3e11, 1.0e12, 2.4e12)
CPU_WIDTHS = (8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 56, 64, 72, 80, 88, 96, 112, 128)
FAST_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                          "--xla_llvm_disable_expensive_passes=true")


def _defaults_absent_from(spec, old_repr: str) -> str:
  """repr(spec) without the `, field=default` pairs of fields that `old_repr` never names:
  fields added to a config after a sweep was planned, at their default, change nothing."""
  text = repr(spec)
  stack = [spec]
  while stack:
    obj = stack.pop()
    for field in dataclasses.fields(obj):
      value = getattr(obj, field.name)
      if dataclasses.is_dataclass(value):
        stack.append(value)
      elif f"{field.name}=" not in old_repr and field.default is not dataclasses.MISSING \
          and value == field.default:
        text = text.replace(f", {field.name}={value!r}", "")
  return text


def same_plan(old: dict, new: dict, spec: SweepSpec) -> bool:
  """Whether a workdir's plan.json is this sweep's plan: the same runs and the same spec,
  allowing config fields added since (at their defaults)."""
  if old.get("runs") != new.get("runs"):
    return False
  return old.get("spec") in (new.get("spec"), _defaults_absent_from(spec, old.get("spec", "")))


def chinchilla_preset(name: str) -> SweepSpec:
  """The sweep of each preset.

  cpu: 5 budgets over 1.5 decades (7.5e10-2.4e12 FLOPs), 7 widths per budget spanning ~12x
  around 25 tokens/parameter (the first sweep's optimum was 35-40 at 2e12, so the grid leans
  toward it), lr_base 1.5e-3 (what the first sweep's LR check asked for; the check is repeated
  at the smallest and the largest budget), 2 seeds on the 3 smallest budgets (seed noise for
  the bootstrap at ~5 min extra). Budgets are boxed in by the corpus above (the largest
  budget's smallest model reads 98% of the 11.8M training tokens once) and by the smallest
  model below (l1d12, 8k parameters). Wall time, estimated from the first sweep's measured
  throughput on this 2-core machine when quiet (15 GFLOP/s at 1e4 parameters, 26 at >= 4e4,
  6 s compile/eval per run): 60 runs, ~33 min of training plus ~2 min of analysis. Batches
  are 8 x 128 tokens because these budgets are step-limited: in a pilot at 2.5e11 FLOPs,
  l2d48's held-out loss was 2.74 / 2.45 / 2.29 / 1.87 / 1.88 at batch 64 / 32 / 16 / 8 / 4
  (same tokens). The first sweep's settings (27 runs, 0.9 decades): --budgets=2.5e11,4.2e11,
  7e11,1.2e12,2e12 --shapes_per_budget=5 --spread=16 --tokens_per_param=20 --seeds=1
  --lr_base=3e-3 --d_models=16,24,32,40,48,56,64,80,96,112,128,160.
  gpu: not run here. 1.25e17 FLOPs; at 150-200 TFLOP/s achieved (15-20% bf16 MFU at these
  widths) ~12 min of training plus ~20 s of compilation per run: ~20 min on one H100. Its
  runs read up to 5.8e8 tokens, far beyond the embedded corpus: pass --data.
  """
  if name == "smoke":
    return SweepSpec(
        name="smoke", budgets=(5e9, 1e10, 2e10), d_models=(16, 32, 64), aspect=32,
        head_dim=16, data=DataConfig(tokenizer="byte", seq_len=32), batch_size=8,
        shapes_per_budget=3, min_steps=20, eval_windows=16, checkpoints_per_run=1,
        tokens_per_param=2.0)
  if name == "cpu":
    return SweepSpec(
        name="cpu", budgets=CPU_BUDGETS, d_models=CPU_WIDTHS, aspect=32, head_dim=16,
        data=DataConfig(tokenizer="byte", seq_len=128), batch_size=8, min_batch_size=8,
        min_steps=100, shapes_per_budget=7, spread=12.0, tokens_per_param=25.0,
        eval_windows=512, checkpoints_per_run=2, lr_base=1.5e-3,
        lr_check_budgets=(CPU_BUDGETS[0], CPU_BUDGETS[-1]), seeds=2,
        seed_budgets=CPU_BUDGETS[:3])
  if name == "gpu":
    return SweepSpec(
        name="gpu", budgets=(1e15, 2.5e15, 6e15, 1.5e16),
        d_models=tuple(range(128, 1025, 64)), aspect=64, head_dim=64,
        base_model=ModelConfig(vocab_size=shapes_lib.BYTE_VOCAB, dtype="bfloat16"),
        data=DataConfig(tokenizer="byte", seq_len=512), batch_size=64, min_batch_size=8,
        min_steps=250, shapes_per_budget=5, eval_windows=1024, checkpoints_per_run=4,
        lr_base=1.5e-3, lr_ref_width=512)
  raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")


# ----------------------------------------------------------------------------- flags

FLAGS = flags.FLAGS

# Flags that set the SweepSpec field of the same name (None keeps the preset's value).
_SPEC_FLAGS = ("aspect", "head_dim", "shapes_per_budget", "spread", "tokens_per_param",
               "batch_size", "min_batch_size", "min_steps", "lr_base", "lr_ref_width",
               "lr_width_exponent", "lr_floor", "warmup_fraction", "warmup_tokens_per_param",
               "eval_windows", "seeds")


def define_flags() -> None:
  """Defines the sweep CLIs' flags, once. Importing this module defines none, so tests and
  other CLIs (experiments.fit_scaling has --bootstrap too) can import it freely."""
  if "budgets" in FLAGS:
    return
  flags.DEFINE_enum("preset", None, list(PRESETS), "Sweep size.")
  flags.DEFINE_string("workdir", None, "Sweep directory: runs/, report, plots, CSV.")
  flags.DEFINE_list("budgets", None, "Compute budgets C in FLOPs, e.g. 1e11,3e11.")
  flags.DEFINE_list("d_models", None, "Model grid: widths (n_layers = d_model / aspect).")
  flags.DEFINE_integer("aspect", None, "d_model per layer in the model family.")
  flags.DEFINE_integer("head_dim", None, "Attention head size (about).")
  flags.DEFINE_integer("shapes_per_budget", None, "Model sizes per budget (>= 3).")
  flags.DEFINE_float("spread", None, "Ratio of largest to smallest N per budget.")
  flags.DEFINE_float("tokens_per_param", None,
                     "D/N that predicts each budget's optimum (the grid's centre).")
  flags.DEFINE_enum("tokenizer", None, ["byte", "sentencepiece"], "Tokenizer.")
  flags.DEFINE_integer("sp_vocab_size", None, "Sentencepiece vocabulary size.")
  flags.DEFINE_string("data", None, "Text/jsonl corpus path or glob (default: embedded).")
  flags.DEFINE_integer("seq_len", None, "Sequence length.")
  flags.DEFINE_integer("batch_size", None, "Batch size (halved for too-short runs).")
  flags.DEFINE_integer("min_batch_size", None, "Smallest batch size allowed.")
  flags.DEFINE_integer("min_steps", None, "Fewest optimizer steps per run.")
  flags.DEFINE_float("lr_base", None, "Peak LR at width lr_ref_width.")
  flags.DEFINE_integer("lr_ref_width", None, "Width at which the peak LR is lr_base.")
  flags.DEFINE_float("lr_width_exponent", None, "lr ~ (lr_ref_width / d_model)^this.")
  flags.DEFINE_float("lr_floor", None, "Final LR as a fraction of the peak.")
  flags.DEFINE_float("warmup_fraction", None, "Most warmup as a fraction of a run's steps.")
  flags.DEFINE_float("warmup_tokens_per_param", None,
                     "Warmup length in tokens per parameter (~1: N tokens).")
  flags.DEFINE_list("lr_check", None, "LR multipliers tried on the smallest budget's middle "
                    "shape; 'none' disables.")
  flags.DEFINE_list("lr_check_budgets", None, "Budgets whose middle shape gets the LR check "
                    "(default: the preset's; the smallest budget if it sets none).")
  flags.DEFINE_integer("seeds", None, "Seeds per sweep point (init and data order); the "
                       "analysis averages them and the bootstrap redraws them.")
  flags.DEFINE_list("seed_budgets", None, "Budgets that get the extra seeds (default: the "
                    "preset's; 'all' for every budget).")
  flags.DEFINE_integer("eval_windows", None, "Validation windows every run is evaluated on.")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype.")
  flags.DEFINE_integer("shard_index", 0, "This machine's shard (runs with index % k == i).")
  flags.DEFINE_integer("num_shards", 1, "Number of machines sharing the sweep.")
  flags.DEFINE_bool("analyze_only", False, "Only gather the results and write the report.")
  flags.DEFINE_bool("estimate", None, "Measure two shapes and print a wall-time estimate "
                    "first (default: on for cpu and gpu).")
  flags.DEFINE_bool("estimate_only", False, "Print the estimate and exit.")
  flags.DEFINE_bool("allow_repeated_tokens", False,
                    "Warn instead of failing when a run needs more than one epoch.")
  flags.DEFINE_integer("bootstrap", None, "Bootstrap resamples for the intervals.")
  flags.DEFINE_list("predict", None, "After the fit, train and score the predicted "
                    "compute-optimal model at these multiples of the largest budget, e.g. 4,16 "
                    "(plus one run mis-sized by --mis_size at the first).")
  flags.DEFINE_enum("predict_approach", "approach3", ["approach1", "approach2", "approach3"],
                    "The approach whose N_opt sizes the prediction runs.")
  flags.DEFINE_float("mis_size", 4.0, "How far (factor in N) the mis-sized run is off.")
  flags.DEFINE_bool("fast_compile", None,
                    "Cheaper XLA compilation, slower steps (default: smoke only).")


def _floats(values, name):
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise ValueError(f"--{name} must be a comma-separated list of numbers, got {values}") from None


OVERRIDE_FLAGS = ("budgets", "d_models", "lr_check", "lr_check_budgets", "seed_budgets",
                  "seq_len", "data", "tokenizer", "sp_vocab_size", "dtype") + _SPEC_FLAGS


def apply_overrides(spec: SweepSpec, values: dict) -> SweepSpec:
  """`spec` with the given flag values ({flag: value}; None or absent keeps the preset's)."""
  changes, data, model = {}, {}, {}
  if values.get("budgets"):
    changes["budgets"] = _floats(values.get("budgets"), "budgets")
  if values.get("d_models"):
    changes["d_models"] = tuple(int(float(d)) for d in values.get("d_models"))
  if values.get("lr_check_budgets"):
    changes["lr_check_budgets"] = _floats(values.get("lr_check_budgets"), "lr_check_budgets")
  elif "budgets" in changes:  # the preset's LR-check budgets that are still swept
    changes["lr_check_budgets"] = tuple(b for b in spec.lr_check_budgets
                                        if b in changes["budgets"])
  seed_budgets = values.get("seed_budgets")
  if seed_budgets and [str(v).lower() for v in seed_budgets] == ["all"]:
    changes["seed_budgets"] = ()
  elif seed_budgets:
    changes["seed_budgets"] = _floats(seed_budgets, "seed_budgets")
  elif "budgets" in changes and spec.seed_budgets:  # keep the preset's that are still swept
    changes["seed_budgets"] = tuple(b for b in spec.seed_budgets if b in changes["budgets"])
    if not changes["seed_budgets"] and values.get("seeds") is None:
      changes["seeds"] = 1
  if values.get("lr_check") is not None:
    changes["lr_check"] = _floats([v for v in values.get("lr_check") if str(v).lower() != "none"],
                                  "lr_check")
  for field in _SPEC_FLAGS:
    if values.get(field) is not None:
      changes[field] = values.get(field)
  if values.get("spread") is not None:
    changes["min_spread"] = min(spec.min_spread, values.get("spread"))
  for flag in ("seq_len", "data", "tokenizer", "sp_vocab_size"):
    if values.get(flag) is not None:
      data[flag] = values.get(flag)
  if values.get("dtype") is not None:
    model["dtype"] = values.get("dtype")
  data_config = dataclasses.replace(spec.data, **data)
  if data_config.tokenizer == "sentencepiece":
    model["vocab_size"] = -(-data_config.sp_vocab_size // 8) * 8
  elif "tokenizer" in data:
    model["vocab_size"] = shapes_lib.BYTE_VOCAB
  return dataclasses.replace(spec, data=data_config,
                             base_model=dataclasses.replace(spec.base_model, **model), **changes)


def spec_from_flags(spec: SweepSpec) -> SweepSpec:
  return apply_overrides(spec, {name: FLAGS[name].value for name in OVERRIDE_FLAGS})


# ----------------------------------------------------------------------------- pipeline


def check_data(spec: SweepSpec, runs, allow_repeats: bool) -> dict:
  """Tokenizes (cached) and checks single pass and the shared eval windows; returns data info."""
  from train.dataset import build_datasets
  _, train_ds, val_ds, info = build_datasets(spec.data)
  over = sweep_lib.check_single_pass(runs, train_ds.n_windows, train_ds.tokens_per_epoch,
                                     allow_repeats)
  eval_windows = sweep_lib.check_eval_windows(runs, val_ds.n_windows)
  max_tokens = max(r.tokens for r in runs)
  return {"corpus": info["corpus"], "train_tokens": train_ds.tokens_per_epoch,
          "val_tokens": info["n_val_tokens"], "eval_tokens": eval_windows * spec.seq_len,
          "max_epochs": max_tokens / train_ds.tokens_per_epoch,
          "repeating_runs": [r.run_id for r in over]}


def estimate(runs, workdir: str) -> dict | None:
  """Measures the smallest and largest unfinished run of each family (dense / MoE) and
  estimates the remaining wall time from them."""
  todo = [r for r in runs if sweep_lib.load_result(workdir, r) is None]
  if not todo:
    return None
  total, per_run, speeds = 0.0, {}, {}
  for moe in sorted({r.config.model.is_moe for r in todo}):
    family = sorted((r for r in todo if r.config.model.is_moe == moe), key=lambda r: r.params)
    probes = {}
    for run in (family[0], family[-1]):
      probes[run.run_id] = sweep_lib.measure_speed(run.config)
      logging.info("measured %s (N=%.3g): %.0f tokens/s, %.1f s to compile", run.run_id,
                   run.params, probes[run.run_id]["tokens_per_s"], probes[run.run_id]["compile_s"])
    est = sweep_lib.estimate_wall_time(family, probes)
    total += est["total_s"]
    per_run.update(est["per_run_s"])
    speeds.update(probes)
  return {"total_s": total, "per_run_s": per_run, "speeds": speeds}


def run_experiment(spec: SweepSpec, workdir: str, *, report_fn=None, shard_index: int = 0,
                   num_shards: int = 1, analyze_only: bool = False, do_estimate: bool = False,
                   estimate_only: bool = False, allow_repeats: bool = False,
                   bootstrap: int = 1000, train_fn=None, runs=None, predict=(),
                   predict_approach: str = "approach3", mis_size: float = 4.0) -> dict:
  """Plans, checks, (estimates,) trains this shard and reports once every run is finished.

  With `predict` (multipliers K), then trains and scores the fit's compute-optimal model at
  K x the largest budget plus one mis-sized run (experiments/scaling/extrapolate.py) and adds
  the table to the report. Returns {"runs", "status", "missing", "paths", "estimate",
  "predictions"}; paths is empty until complete.
  """
  start = time.perf_counter()
  runs = runs if runs is not None else shapes_lib.plan_sweep(spec)
  report_fn = report_fn or write_chinchilla_report
  print(shapes_lib.describe_plan(runs), flush=True)
  data_info = check_data(spec, runs, allow_repeats)
  plan = {"spec": repr(spec), "runs": [r.record() for r in runs]}
  plan_path = os.path.join(workdir, "plan.json")
  if os.path.exists(plan_path):
    with open(plan_path) as f:
      if not same_plan(json.load(f), json.loads(json.dumps(plan)), spec):
        raise ValueError(
            f"{workdir} holds a sweep planned with other settings (its plan.json differs); "
            "rerun with the same flags to resume it, or pass a new --workdir")
  sweep_lib.write_json_atomic(plan_path, plan)
  out = {"runs": runs, "status": None, "missing": [], "paths": {}, "estimate": None}
  if not analyze_only:
    if do_estimate or estimate_only:
      mine = sweep_lib.shard_runs(runs, shard_index, num_shards)
      est = estimate(mine, workdir)
      out["estimate"] = est
      if est:
        print(f"estimated wall time for {len(est['per_run_s'])} remaining run(s) of this shard: "
              f"{est['total_s'] / 60:.1f} min (+ analysis)", flush=True)
      if estimate_only:
        return out
    out["status"] = sweep_lib.run_sweep(runs, workdir, shard_index=shard_index,
                                        num_shards=num_shards, train_fn=train_fn)
    if out["status"]["interrupted"]:
      return out
  _, out["missing"] = sweep_lib.collect_results(workdir, runs)
  if out["missing"] and not analyze_only:
    print(f"{len(out['missing'])} run(s) of other shards are not finished; when they are, "
          "rerun with --analyze_only to write the report", flush=True)
    return out
  timing = {"elapsed_s": time.perf_counter() - start,
            "estimate_s": out["estimate"]["total_s"] if out["estimate"] else None}
  out["paths"] = report_fn(spec, runs, workdir, is_smoke=spec.name == "smoke",
                           bootstrap=bootstrap, data_info=data_info, timing=timing)
  if predict and not analyze_only:
    out["predictions"] = _predictions(spec, workdir, out, predict, predict_approach, mis_size,
                                      train_fn, data_info)
    if out["status"] is not None and out["predictions"]["status"]["interrupted"]:
      out["status"]["interrupted"] = out["predictions"]["status"]["interrupted"]
      return out
  print(f"report: {out['paths']['report']}", flush=True)
  return out


def _predictions(spec, workdir, out, multipliers, approach, mis_size, train_fn, data_info):
  """Runs and scores the prediction runs; appends their section to the report."""
  from experiments.scaling import extrapolate
  with open(out["paths"]["analysis_json"]) as f:
    analysis = json.load(f)
  pred = extrapolate.run_predictions(spec, workdir, analysis, multipliers, approach=approach,
                                     mis_size=mis_size, train_fn=train_fn,
                                     train_tokens=(data_info or {}).get("train_tokens"))
  if pred["rows"]:
    with open(out["paths"]["report"], "a") as f:
      f.write("\n" + "\n".join(extrapolate.markdown(
          pred["rows"], analysis.get("confidence", 0.95))) + "\n")
    out["paths"].update(pred["paths"])
    for row in pred["rows"]:
      predicted = extrapolate.predict_lib.format_entry(row["predicted_loss"], ".4f")
      print(f"{row['run_id']}: predicted loss {predicted}, achieved {row['achieved_loss']}",
            flush=True)
  return pred


def default_bootstrap(preset: str) -> int:
  return 100 if preset == "smoke" else 1000


def apply_fast_compile(preset: str) -> None:
  """Smoke runs are compile-bound on CPU: trade step speed for ~2x faster XLA compiles."""
  enabled = FLAGS.fast_compile if FLAGS.fast_compile is not None else preset == "smoke"
  if enabled:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                               FAST_COMPILE_XLA_FLAGS).strip()


def cli_options(preset: str) -> dict:
  return dict(shard_index=FLAGS.shard_index, num_shards=FLAGS.num_shards,
              analyze_only=FLAGS.analyze_only,
              do_estimate=FLAGS.estimate if FLAGS.estimate is not None else preset != "smoke",
              estimate_only=FLAGS.estimate_only, allow_repeats=FLAGS.allow_repeated_tokens,
              bootstrap=FLAGS.bootstrap if FLAGS.bootstrap is not None
              else default_bootstrap(preset),
              predict=_floats(FLAGS.predict or (), "predict"),
              predict_approach=FLAGS.predict_approach, mis_size=FLAGS.mis_size)


def run_from_cli(argv, name: str, launch) -> None:
  """The experiment CLIs' shared body: quiet logs, fast compiles for smoke, then `launch()`.

  User errors exit with a one-line message; an interrupted sweep says how to resume.
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from infer import cli
  apply_fast_compile(FLAGS.preset)
  out = cli.run_cli(name, launch)
  if out["status"] and out["status"]["interrupted"]:
    sys.exit(f"interrupted during {out['status']['interrupted']}; rerun to resume")


def main(argv):
  run_from_cli(argv, "chinchilla", lambda: run_experiment(
      spec_from_flags(chinchilla_preset(FLAGS.preset)), FLAGS.workdir,
      **cli_options(FLAGS.preset)))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["preset", "workdir"])
  app.run(main)
