r"""Chinchilla IsoFLOP sweep on the embedded corpus: train, fit, report.

  python -m experiments.chinchilla --preset=smoke|cpu|gpu --workdir=DIR

trains every run of the preset's sweep (WORKDIR/runs/<id>, resumable; rerun the same command
after an interruption), then fits the three Chinchilla approaches and writes report.md, PNG
plots, results.csv (every run) and runs.csv / analysis.json (the fitted runs) into DIR.

Presets: smoke (2-3 CPU minutes, exercises every step, meaningless numbers), cpu (~30 min on
2 CPU cores, byte tokenizer), gpu (one H100/H200 in ~20 min, bf16; its budgets need far more
than the embedded corpus's ~12M tokens: pass --data=YOUR_CORPUS). Flags override the
budgets, model grid, tokenizer, sequence length and schedule, e.g.
  --budgets=1e11,3e11,1e12 --d_models=32,64,96,128 --seq_len=256 --lr_base=2e-3

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
from model.config import ModelConfig
from train.config import DataConfig

PRESETS = ("smoke", "cpu", "gpu")
FAST_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                          "--xla_llvm_disable_expensive_passes=true")


def chinchilla_preset(name: str) -> SweepSpec:
  """The sweep of each preset.

  cpu: sized on this repository's 2-core CPU machine (quiet): 0.2M tokens/s for l1d16 down to
  10k tokens/s (~27 GFLOP/s) for l3d96, 5-8 s of compilation per run, so 27 runs (5 budgets x
  5 shapes + 2 LR checks, 2.3e13 FLOPs) take ~23 min plus ~0.5 min of analysis. The budgets
  are boxed in by the corpus above (the largest run reads 96% of the 11.8M training tokens
  once) and by the smallest sensible model below (l1d16, 12k parameters, 72% embeddings).
  Batches are 8 x 128 tokens because these budgets are step-limited: in a pilot at 2.5e11
  FLOPs, l2d48's held-out loss was 2.74 / 2.45 / 2.29 / 1.87 / 1.88 at batch 64 / 32 / 16 / 8
  / 4 (same tokens), and the LR rule's value beat x0.5 and x2.
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
        name="cpu", budgets=(2.5e11, 4.2e11, 7e11, 1.2e12, 2e12),
        d_models=(16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160), aspect=32, head_dim=16,
        data=DataConfig(tokenizer="byte", seq_len=128), batch_size=8, min_batch_size=8,
        min_steps=100, shapes_per_budget=5, eval_windows=512, checkpoints_per_run=2)
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
               "eval_windows")


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
  flags.DEFINE_bool("fast_compile", None,
                    "Cheaper XLA compilation, slower steps (default: smoke only).")


def _floats(values, name):
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise ValueError(f"--{name} must be a comma-separated list of numbers, got {values}") from None


OVERRIDE_FLAGS = ("budgets", "d_models", "lr_check", "seq_len", "data", "tokenizer",
                  "sp_vocab_size", "dtype") + _SPEC_FLAGS


def apply_overrides(spec: SweepSpec, values: dict) -> SweepSpec:
  """`spec` with the given flag values ({flag: value}; None or absent keeps the preset's)."""
  changes, data, model = {}, {}, {}
  if values.get("budgets"):
    changes["budgets"] = _floats(values.get("budgets"), "budgets")
  if values.get("d_models"):
    changes["d_models"] = tuple(int(float(d)) for d in values.get("d_models"))
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


def _lr_check(results) -> dict | None:
  checks = [r for r in results if r["kind"] == "lr_check"]
  if not checks:
    return None
  budget, shape = checks[0]["budget"], checks[0]["shape"]
  base = [r for r in results if r["kind"] == "isoflop" and r["budget"] == budget
          and r["shape"] == shape]
  rows = sorted(base + checks, key=lambda r: r["lr_multiplier"])
  finite = [r for r in rows if r["loss"] is not None]
  out = {"budget": budget, "shape": shape,
         "runs": [{"multiplier": r["lr_multiplier"], "lr": r["learning_rate"], "loss": r["loss"]}
                  for r in rows]}
  if not base or base[0]["loss"] is None or not finite:
    out["verdict"] = "incomplete: the chosen-LR run has no finite loss"
    return out
  best = min(finite, key=lambda r: r["loss"])
  gap = base[0]["loss"] - best["loss"]
  out.update(best_multiplier=best["lr_multiplier"], gap=gap, chosen_is_best=gap <= 0)
  if gap <= 0:
    out["verdict"] = "the chosen LR (x1) gives the lowest loss of the three"
  else:
    out["verdict"] = (f"x{best['lr_multiplier']:g} beats the chosen LR by {gap:.4f} nats "
                      f"({100 * gap / best['loss']:.2f}%); consider --lr_base="
                      f"{best['lr_multiplier'] * base[0]['learning_rate']:.3g} scaled to "
                      "the reference width")
  return out


def _sweep_checks(analysis: dict) -> list:
  """Plain statements for the success criteria: minima in range, N_opt growing, a vs 0.5."""
  out = []
  a2 = analysis.get("approach2", {})
  budgets = a2.get("budgets") or []
  if budgets:
    out.append(f"IsoFLOP minima inside the sampled N range: {a2['n_vertex_in_range']}/"
               f"{a2['n_budgets']} budgets (upward parabolas: {a2['n_upward']}).")
    n_opt = [b["N_opt"] for b in budgets]
    grows = all(n is not None for n in n_opt) and all(
        b > a for a, b in zip(n_opt, n_opt[1:]))
    out.append("N_opt grows with C: " + ("yes" if grows else "NO") + " (" + ", ".join(
        f"{b['C']:.3g}: {'n/a' if b['N_opt'] is None else format(b['N_opt'], '.3g')}"
        for b in budgets) + ").")
  for name in ("approach1", "approach2", "approach3"):
    s = analysis.get(name, {})
    if s.get("a") is None:
      continue
    iv = (s.get("bootstrap") or {}).get("a")
    if iv:
      where = "contains" if iv[0] <= 0.5 <= iv[1] else "excludes"
      out.append(f"{name}: a = {s['a']:.3f}, interval [{iv[0]:.3f}, {iv[1]:.3f}] {where} 0.5.")
    else:
      out.append(f"{name}: a = {s['a']:.3f} (no interval).")
  return out


def _fmt(x, spec=".4g"):
  return "n/a" if x is None else format(x, spec)


def design_lines(spec: SweepSpec, data_info: dict | None) -> list:
  lines = [
      f"- N: total parameters incl. embeddings (active parameters for MoE); FLOPs per token: "
      f"model/flops.py exact count (fwd+bwd, attention incl., seq_len {spec.seq_len}); a run's "
      f"compute = steps x batch x seq_len x FLOPs/token, within {100 * spec.tolerance:g}% of C.",
      f"- Family: d_model in {list(spec.d_models)}, n_layers = round(d_model/{spec.aspect}), "
      f"head dim {spec.head_dim}, SwiGLU FFN ~8/3 d, vocab {spec.base_model.vocab_size} "
      f"({spec.data.tokenizer} tokenizer), {spec.base_model.dtype} compute.",
      f"- Shapes per budget: {spec.shapes_per_budget}, nearest to a {spec.spread:g}x ladder "
      f"around the N with {spec.tokens_per_param:g} tokens/parameter.",
      f"- LR = {spec.lr_base:g} x ({spec.lr_ref_width}/d_model)^{spec.lr_width_exponent:g}; "
      f"warmup ~{spec.warmup_tokens_per_param:g} x N tokens (>= {spec.min_warmup_steps} steps, "
      f"<= {100 * spec.warmup_fraction:g}% of steps); cosine to {spec.lr_floor:g} x peak at the "
      "run's last step; AdamW, no repeated tokens.",
  ]
  if data_info:
    lines.append(
        f"- Data: {data_info['corpus']}, {data_info['train_tokens']:,} training tokens (largest "
        f"run uses {100 * data_info['max_epochs']:.1f}% of them); every run is evaluated on the "
        f"same {data_info['eval_tokens']:,} validation tokens.")
  return lines


def runs_table(results) -> list:
  lines = ["| run | C | N | D | D/N | lr | steps | batch | held-out loss | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    lines.append(f"| {r['run_id']} | {r['budget']:.3g} | {r['params']:.3g} | {r['tokens']:.3g} "
                 f"| {r['tokens'] / r['params']:.1f} | {r['learning_rate']:.2e} | {r['steps']} "
                 f"| {r['batch_size']} | {_fmt(r['loss'])} | {r['wall_time_s']:.0f} |")
  return lines


SMOKE_PARAMETRIC_STARTS = 32  # Approach 3 L-BFGS starts for smoke reports (default 256)


def analyze_runs(rows, bootstrap: int, bootstrap_parametric: int, grid=None) -> dict:
  """experiments.scaling.analyze with this experiment's bootstrap and grid settings.

  An approach the data cannot support (e.g. one budget) comes back as {"skipped": reason}.
  """
  from experiments.scaling import approaches
  return approaches.analyze(rows, bootstrap=bootstrap, bootstrap_parametric=bootstrap_parametric,
                            grid=grid or approaches.DEFAULT_GRID)


def write_chinchilla_report(spec: SweepSpec, runs, workdir: str, *, is_smoke: bool,
                            bootstrap: int, data_info: dict | None = None,
                            timing: dict | None = None) -> dict:
  """Analyses the finished IsoFLOP runs; writes report.md, plots, CSVs and analysis.json."""
  from experiments.scaling import report
  results, missing = sweep_lib.collect_results(workdir, runs)
  rows = [r for r in sweep_lib.analysis_rows(results) if r["loss"] is not None]
  if not rows:
    raise ValueError(f"no finished runs with a finite loss in {workdir}; train the sweep first")
  analysis = analyze_runs(rows, bootstrap, min(bootstrap, 50 if is_smoke else 200),
                          grid=SMOKE_PARAMETRIC_STARTS if is_smoke else None)
  analysis["lr_check"] = _lr_check(results)
  analysis["sweep_checks"] = _sweep_checks(analysis)
  analysis["missing_runs"] = missing
  meta = {"title": f"Chinchilla IsoFLOP sweep ({spec.name} preset)", "preset": spec.name,
          "budgets": ", ".join(f"{c:.3g}" for c in sorted(spec.budgets)),
          "runs": f"{len(results)} finished of {len(runs)} planned"}
  paths = report.write_report(workdir, rows, analysis, meta, is_smoke=is_smoke)
  paths["results_csv"] = sweep_lib.write_results_csv(os.path.join(workdir, "results.csv"),
                                                     results)
  lines = ["", "## Sweep design", ""] + design_lines(spec, data_info) + [""]
  if missing:
    lines += [f"**{len(missing)} planned run(s) have no result yet** (other shards, or "
              f"interrupted): {', '.join(missing)}.", ""]
  lines += ["## Checks", ""] + [f"- {s}" for s in analysis["sweep_checks"]] + [""]
  lr = analysis["lr_check"]
  lines += ["## Learning-rate check", ""]
  if lr:
    lines += [f"Budget {lr['budget']:.3g}, shape {lr['shape']}:", "",
              "| LR multiplier | LR | held-out loss |", "|---|---|---|"]
    lines += [f"| x{r['multiplier']:g} | {r['lr']:.3g} | {_fmt(r['loss'])} |" for r in lr["runs"]]
    lines += ["", f"Verdict: {lr['verdict']}.", ""]
  else:
    lines += ["Not run (--lr_check=none).", ""]
  lines += ["## Runs", "", "All runs, including the LR check (`results.csv` has every column).",
            ""] + runs_table(results) + [""]
  total = sum(r["wall_time_s"] for r in results)
  lines += [f"Training wall time of the finished runs: {total / 60:.1f} min."]
  if timing:
    est = timing.get("estimate_s")
    lines += [f"This invocation took {timing.get('elapsed_s', 0) / 60:.1f} min before the "
              "analysis; estimate printed at its start: "
              + (f"{est / 60:.1f} min." if est else "none (--estimate off).")]
  with open(paths["report"], "a") as f:
    f.write("\n".join(lines) + "\n")
  return paths


def run_experiment(spec: SweepSpec, workdir: str, *, report_fn=None, shard_index: int = 0,
                   num_shards: int = 1, analyze_only: bool = False, do_estimate: bool = False,
                   estimate_only: bool = False, allow_repeats: bool = False,
                   bootstrap: int = 1000, train_fn=None, runs=None) -> dict:
  """Plans, checks, (estimates,) trains this shard and reports once every run is finished.

  Returns {"runs", "status", "missing", "paths", "estimate"}; paths is empty until complete.
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
      if json.load(f) != json.loads(json.dumps(plan)):
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
  print(f"report: {out['paths']['report']}", flush=True)
  return out


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
              else default_bootstrap(preset))


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
