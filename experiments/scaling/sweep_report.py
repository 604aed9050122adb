"""The Chinchilla sweep's report: analysis of the finished runs, LR check, seed noise, checks,
design and run tables (report.md, plots, CSVs and analysis.json in the sweep directory)."""

import os

from experiments.scaling import sweep as sweep_lib
from experiments.scaling.shapes import SweepSpec


def _lr_check_one(results, budget) -> dict:
  checks = [r for r in results if r["kind"] == "lr_check" and r["budget"] == budget]
  shape = checks[0]["shape"]
  base = [r for r in results if r["kind"] == "isoflop" and r["budget"] == budget
          and r["shape"] == shape and not r.get("seed")]
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


def _lr_check(results) -> list | None:
  """One LR-check summary per budget that has LR-check runs (seed-0 runs compared)."""
  budgets = sorted({r["budget"] for r in results if r["kind"] == "lr_check"})
  return [_lr_check_one(results, b) for b in budgets] or None


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
  lines += ["## Learning-rate check", ""]
  for lr in analysis["lr_check"] or []:
    lines += [f"Budget {lr['budget']:.3g}, shape {lr['shape']}:", "",
              "| LR multiplier | LR | held-out loss |", "|---|---|---|"]
    lines += [f"| x{r['multiplier']:g} | {r['lr']:.3g} | {_fmt(r['loss'])} |" for r in lr["runs"]]
    lines += ["", f"Verdict: {lr['verdict']}.", ""]
  if not analysis["lr_check"]:
    lines += ["Not run (--lr_check=none).", ""]
  noise = analysis.get("seed_noise")
  lines += ["## Seed noise", ""]
  if noise:
    lines += [f"{noise['seeds_per_point'][1]} seeds per point: the held-out loss varies from seed "
              f"to seed by {noise['std']:.4f} nats ({100 * noise['relative_std']:.2f}%, pooled "
              f"standard deviation, {noise['dof']} degrees of freedom); a seed-averaged point by "
              f"~{noise['std_of_mean']:.4f}. The bootstrap redraws each point's seeds.", "",
              "| C | seed std (nats) | relative |", "|---|---|---|"]
    lines += [f"| {b['C']:.3g} | {_fmt(b['std'])} | "
              + ("one seed |" if b["relative_std"] is None
                 else f"{100 * b['relative_std']:.2f}% |")
              for b in noise["per_budget"]] + [""]
  else:
    lines += ["One seed per point (--seeds=1): seed noise not measured.", ""]
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
