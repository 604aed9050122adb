r"""Dense vs Mixture-of-Experts IsoFLOP sweeps at matched active compute.

  python -m experiments.moe_vs_dense --preset=smoke|cpu|gpu --workdir=DIR

Trains, for every budget C, the same model shapes twice: dense, and MoE (`--n_experts`
experts, top-`--experts_per_token`, each expert 1/k of the dense FFN width, so a token's
FLOPs match the dense member's plus the router). N and FLOPs count active parameters. Then
reports, per budget, each family's IsoFLOP optimum (parabola vertex in ln N, else the best
run), the loss gap, and MoE's effective compute multiplier: the dense compute needed to
reach the MoE loss, interpolated on the dense optima's loss-vs-compute envelope (or, outside
it, from a power law L = A * C^-alpha fitted to it) divided by C. Writes report.md,
PNG plots and results.csv into DIR. Every flag of experiments.chinchilla applies (budgets,
model grid, tokenizer, sequence length, schedule, sharding, --analyze_only).
"""

import dataclasses
import math
import os

import numpy as np
from absl import app, flags

from experiments import chinchilla
from experiments.scaling import shapes as shapes_lib
from experiments.scaling import sweep as sweep_lib
from experiments.scaling import sweep_report
from experiments.scaling.shapes import SweepSpec

PRESETS = ("smoke", "cpu", "gpu")
FAMILIES = ("dense", "moe")

def define_flags() -> None:
  """experiments.chinchilla's flags plus the MoE ones (defined only when run as a CLI)."""
  chinchilla.define_flags()
  flags.DEFINE_integer("n_experts", 8, "Routed experts per MoE layer.")
  flags.DEFINE_integer("experts_per_token", 2, "Experts each token is routed to.")
  flags.DEFINE_float("capacity_factor", None,
                     "Expert capacity factor; <= 0 is dropless (default: the preset's).")


def moe_preset(name: str) -> SweepSpec:
  """The dense half of each preset; family_specs derives the MoE half."""
  if name == "smoke":
    return dataclasses.replace(chinchilla.chinchilla_preset("smoke"), name="smoke", lr_check=(),
                               seeds=2)
  if name == "cpu":
    return dataclasses.replace(
        chinchilla.chinchilla_preset("cpu"), name="cpu", budgets=(2.5e11, 6e11, 1.5e12),
        d_models=(16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160), shapes_per_budget=4,
        spread=16.0, tokens_per_param=20.0, lr_check=(), lr_check_budgets=(), seeds=2,
        seed_budgets=())
  if name == "gpu":
    gpu = chinchilla.chinchilla_preset("gpu")
    return dataclasses.replace(
        gpu, name="gpu", budgets=(1e15, 3e15, 9e15), shapes_per_budget=4, lr_check=(), seeds=2,
        base_model=dataclasses.replace(gpu.base_model, capacity_factor=1.25))
  raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")


def family_specs(spec: SweepSpec, n_experts: int = 8, experts_per_token: int = 2,
                 capacity_factor: float | None = None) -> dict:
  """{"dense": spec, "moe": spec with MoE layers}; run ids are prefixed by the family."""
  capacity = spec.base_model.capacity_factor if capacity_factor is None else capacity_factor
  dense_model = dataclasses.replace(spec.base_model, n_experts=0)
  moe_model = dataclasses.replace(spec.base_model, n_experts=n_experts,
                                  experts_per_token=experts_per_token, moe_every=1,
                                  capacity_factor=capacity)
  return {"dense": dataclasses.replace(spec, base_model=dense_model, run_prefix="dense_",
                                       lr_check=()),
          "moe": dataclasses.replace(spec, base_model=moe_model, run_prefix="moe_",
                                     lr_check=())}


def plan(specs: dict) -> list:
  """Dense then MoE runs, re-indexed so sharding sees one list."""
  runs = shapes_lib.plan_sweep(specs["dense"]) + shapes_lib.plan_sweep(specs["moe"])
  return [dataclasses.replace(r, index=i) for i, r in enumerate(runs)]


def family_of(result: dict) -> str:
  return result["run_id"].split("_", 1)[0]


# ----------------------------------------------------------------------------- analysis


def isoflop_optimum(params, losses) -> dict:
  """Parabola in ln N through one budget's runs; its vertex if it opens upward inside the
  sampled range, else the best run."""
  log_n, loss = np.log(np.asarray(params, float)), np.asarray(losses, float)
  best = int(np.argmin(loss))
  out = {"N_opt": float(np.exp(log_n[best])), "loss_opt": float(loss[best]), "source": "best run"}
  if len(np.unique(log_n)) >= 3:
    c2, c1, c0 = np.polyfit(log_n, loss, 2)
    if c2 > 0:
      x = -c1 / (2 * c2)
      if log_n.min() <= x <= log_n.max():
        out = {"N_opt": float(np.exp(x)), "loss_opt": float(c0 + c1 * x + c2 * x * x),
               "source": "parabola"}
  return out


def family_optima(results, family: str) -> list:
  """Per budget (ascending) the family's IsoFLOP optimum and its runs (IsoFLOP runs only)."""
  rows = [r for r in results if family_of(r) == family and r["loss"] is not None
          and r.get("kind", "isoflop") == "isoflop"]
  out = []
  for budget in sorted({r["budget"] for r in rows}):
    group = sorted((r for r in rows if r["budget"] == budget), key=lambda r: r["params"])
    opt = isoflop_optimum([r["params"] for r in group], [r["loss"] for r in group])
    out.append(dict(opt, C=budget, n_runs=len(group),
                    runs=[(r["params"], r["loss"]) for r in group]))
  return out


def power_law(c, loss) -> dict | None:
  """L = A * C^-alpha through the points (least squares in log-log)."""
  if len(c) < 2:
    return None
  slope, intercept = np.polyfit(np.log(c), np.log(loss), 1)
  return {"A": float(np.exp(intercept)), "alpha": float(-slope)}


def dense_compute_for_loss(loss: float, dense: list, law: dict | None) -> tuple:
  """(C, method): dense compute reaching `loss` on the dense envelope."""
  c = np.array([d["C"] for d in dense])
  l = np.array([d["loss_opt"] for d in dense])
  monotone = len(c) >= 2 and np.all(np.diff(l) < 0)
  if monotone and l.min() <= loss <= l.max():
    log_c = np.interp(math.log(loss), np.log(l[::-1]), np.log(c[::-1]))
    return float(math.exp(log_c)), "interpolated"
  if law and law["alpha"] > 0:
    return float((loss / law["A"]) ** (-1.0 / law["alpha"])), "power law (extrapolated)"
  return None, "n/a (dense loss does not fall with compute)"


def compare(results) -> dict:
  """Loss gap and effective compute multiplier of MoE at each budget."""
  dense, moe = family_optima(results, "dense"), family_optima(results, "moe")
  law = power_law([d["C"] for d in dense], [d["loss_opt"] for d in dense])
  by_c = {d["C"]: d for d in dense}
  rows = []
  for m in moe:
    d = by_c.get(m["C"])
    c_eq, method = dense_compute_for_loss(m["loss_opt"], dense, law)
    rows.append({"C": m["C"], "dense_loss": d and d["loss_opt"], "dense_N_opt": d and d["N_opt"],
                 "moe_loss": m["loss_opt"], "moe_N_opt": m["N_opt"],
                 "gap": d and d["loss_opt"] - m["loss_opt"],
                 "relative_gap": d and (d["loss_opt"] - m["loss_opt"]) / d["loss_opt"],
                 "dense_C_equivalent": c_eq, "multiplier": c_eq and c_eq / m["C"],
                 "method": method})
  return {"dense": dense, "moe": moe, "dense_power_law": law, "budgets": rows}


# ----------------------------------------------------------------------------- plots


def _figure():
  from matplotlib.figure import Figure
  return Figure(figsize=(7, 4.6))


def _colors(budgets):
  from matplotlib import cm, colors
  norm = colors.LogNorm(vmin=min(budgets), vmax=max(budgets) * 1.0001)
  return lambda c: cm.viridis(norm(c) * 0.9)


def make_plots(out_dir: str, comparison: dict) -> dict:
  """isoflop_moe_vs_dense.png, envelope_moe_vs_dense.png, compute_multiplier.png."""
  paths = {}
  budgets = [d["C"] for d in comparison["dense"] + comparison["moe"]]
  if not budgets:
    return paths
  color = _colors(budgets)
  fig = _figure()
  ax = fig.add_subplot()
  for family, marker, style in (("dense", "o", "-"), ("moe", "s", "--")):
    for opt in comparison[family]:
      n, l = zip(*opt["runs"])
      ax.plot(n, l, style, marker=marker, color=color(opt["C"]), ms=5,
              label=f"{family} C={opt['C']:.2g}")
      ax.scatter([opt["N_opt"]], [opt["loss_opt"]], marker="*", s=120, color=color(opt["C"]),
                 edgecolors="black", zorder=3)
  ax.set_xscale("log")
  ax.set_xlabel("active parameters N")
  ax.set_ylabel("held-out loss (nats/token)")
  ax.set_title("IsoFLOP profiles: dense (solid) vs MoE (dashed)")
  ax.legend(fontsize=7, ncol=2)
  paths["isoflop"] = _save(fig, os.path.join(out_dir, "isoflop_moe_vs_dense.png"))

  fig = _figure()
  ax = fig.add_subplot()
  for family, marker in (("dense", "o"), ("moe", "s")):
    pts = comparison[family]
    ax.plot([p["C"] for p in pts], [p["loss_opt"] for p in pts], marker=marker, label=family)
  law = comparison["dense_power_law"]
  if law:
    c = np.geomspace(min(budgets) / 2, max(budgets) * 4, 50)
    ax.plot(c, law["A"] * c ** -law["alpha"], ":", color="gray",
            label=f"dense fit L = {law['A']:.3g} C^-{law['alpha']:.3f}")
  for row in comparison["budgets"]:
    if row["dense_C_equivalent"]:
      ax.annotate("", xy=(row["dense_C_equivalent"], row["moe_loss"]),
                  xytext=(row["C"], row["moe_loss"]),
                  arrowprops={"arrowstyle": "->", "color": "tab:red", "lw": 0.8})
  ax.set_xscale("log")
  _plain_minor_ticks(ax)
  ax.set_xlabel("training compute C (FLOPs, active parameters)")
  ax.set_ylabel("IsoFLOP-optimal loss")
  ax.set_title("Loss vs compute; arrows: dense compute matching the MoE loss")
  ax.legend(fontsize=8)
  paths["envelope"] = _save(fig, os.path.join(out_dir, "envelope_moe_vs_dense.png"))

  rows = [r for r in comparison["budgets"] if r["multiplier"]]
  if rows:
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([r["C"] for r in rows], [r["multiplier"] for r in rows], marker="o")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log")
    _plain_minor_ticks(ax)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("effective compute multiplier of MoE")
    paths["multiplier"] = _save(fig, os.path.join(out_dir, "compute_multiplier.png"))
  return paths


def _plain_minor_ticks(ax) -> None:
  """Less than a decade of C: label the minor ticks compactly (1.5e+12) so they don't collide."""
  from matplotlib.ticker import FuncFormatter
  label = lambda x, _: f"{x:.0e}" if f"{x:.0e}"[0] in "25" else ""
  ax.xaxis.set_minor_formatter(FuncFormatter(label))


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


# ----------------------------------------------------------------------------- report


def _fmt(x, spec=".4g") -> str:
  return "n/a" if x is None else format(x, spec)


def write_moe_report(spec: SweepSpec, runs, workdir: str, *, is_smoke: bool, bootstrap: int,
                     data_info: dict | None = None, timing: dict | None = None,
                     predict: float | None = None, check_runs=()) -> dict:
  """report.md, the plots, results.csv and comparison.json in workdir.

  Seed-averaged comparison with bootstrap intervals (experiments/scaling/multiplier.py); with
  `predict` = K, the multiplier and MoE loss predicted at K x the largest budget, scored
  against the finished `check_runs`.
  """
  from experiments.scaling import multiplier
  results, missing = sweep_lib.collect_results(workdir, runs)
  if not results:
    raise ValueError(f"no finished runs in {workdir}; train the sweep first")
  predict_at = [predict * max(spec.budgets)] if predict else []
  analysis = multiplier.analyze(results, compare, bootstrap=min(bootstrap, 200),
                                predict_at=predict_at)
  checks = sweep_lib.collect_results(workdir, list(check_runs))[0] if check_runs else []
  analysis["checks"] = [multiplier.score(p, next((c for c in checks if c["budget"] == p["C"]),
                                                 None), analysis["comparison"],
                                         dense_compute_for_loss)
                        for p in analysis["predictions"]]
  comparison = analysis["comparison"]
  paths = make_plots(workdir, comparison)
  paths["results_csv"] = sweep_lib.write_results_csv(os.path.join(workdir, "results.csv"),
                                                     results + checks)
  paths["comparison_json"] = os.path.join(workdir, "comparison.json")
  sweep_lib.write_json_atomic(paths["comparison_json"], analysis)
  moe_model = next((r.config.model for r in runs if r.config.model.is_moe), None)
  lines = [f"# Dense vs MoE at matched active compute ({spec.name} preset)", ""]
  if is_smoke:
    lines += ["> **WARNING: smoke test.** These runs are far too small and short for the numbers "
              "below to mean anything; they only show that the sweep, the comparison, the plots "
              "and this report run end to end.", ""]
  if moe_model:
    routing = ("dropless" if moe_model.capacity_factor <= 0
               else f"capacity factor {moe_model.capacity_factor:g}")
    lines += [f"- MoE: {moe_model.n_experts} experts, top-{moe_model.experts_per_token}, expert "
              f"width = dense FFN width / {moe_model.experts_per_token}, every layer, {routing}; "
              "N and FLOPs count active parameters (total parameters are in results.csv)."]
  lines += sweep_report.design_lines(spec, data_info) + [""]
  if missing:
    lines += [f"**{len(missing)} planned run(s) have no result yet**: {', '.join(missing)}.", ""]
  lines += ["## Loss gap and effective compute multiplier", "",
            "Optimum per budget: vertex of a parabola in ln N (else the best run). Multiplier: "
            "dense compute reaching the MoE optimum's loss / C.", "",
            "| C | dense loss (N_opt) | MoE loss (N_opt) | gap (nats) | gap % | multiplier | how |",
            "|---|---|---|---|---|---|---|"]
  for r in comparison["budgets"]:
    lines.append(
        f"| {r['C']:.3g} | {_fmt(r['dense_loss'])} ({_fmt(r['dense_N_opt'], '.3g')}) | "
        f"{_fmt(r['moe_loss'])} ({_fmt(r['moe_N_opt'], '.3g')}) | {_fmt(r['gap'], '+.4f')} | "
        f"{_fmt(r['relative_gap'] and 100 * r['relative_gap'], '+.2f')} | "
        f"{_fmt(r['multiplier'], '.2f')} | {r['method']} |")
  law = comparison["dense_power_law"]
  if law:
    lines += ["", f"Dense envelope fit: L = {law['A']:.4g} * C^-{law['alpha']:.4f}."]
  lines += [""] + _interval_lines(analysis)
  sources = {f"{fam} {o['C']:.3g}: {o['source']}" for fam in FAMILIES for o in comparison[fam]
             if o["source"] != "parabola"}
  if sources:
    lines += ["", "Budgets without an interior parabola minimum (optimum = best run, so the "
              "grid does not bracket it): " + "; ".join(sorted(sources)) + "."]
  lines += [""]
  for name, title in (("isoflop", "IsoFLOP profiles"), ("envelope", "Loss vs compute"),
                      ("multiplier", "Compute multiplier")):
    if name in paths:
      lines += [f"![{title}]({os.path.basename(paths[name])})", ""]
  lines += ["## Runs", ""] + sweep_report.runs_table(results + checks) + [""]
  if timing:
    lines += [f"This invocation took {timing.get('elapsed_s', 0) / 60:.1f} min before the "
              "analysis."]
  paths["report"] = os.path.join(workdir, "report.md")
  with open(paths["report"], "w") as f:
    f.write("\n".join(lines) + "\n")
  return paths


def _interval_lines(analysis: dict) -> list:
  conf = 100 * analysis["confidence"]
  seeds = analysis["seeds_per_point"]
  rel = analysis["seed_noise_relative_std"]
  lines = ["## Seed noise and intervals", "",
           f"Seeds per point: {seeds[0]}-{seeds[1]}; seed-to-seed loss noise "
           + (f"{100 * rel:.2f}% (pooled relative std)." if rel else "not measured (one seed).")
           + (f" {conf:.0f}% intervals from {analysis['bootstrap']} resamples of the seeds."
              if analysis["bootstrap"] else " No intervals without seed noise."), "",
           "| C | multiplier [interval] | gap (nats) [interval] |", "|---|---|---|"]
  for r in analysis["intervals"]:
    iv, gv = r["multiplier_interval"], r["gap_interval"]
    lines.append(f"| {r['C']:.3g} | {_fmt(r['multiplier'], '.2f')} "
                 f"{'' if not iv else f'[{iv[0]:.2f}, {iv[1]:.2f}]'} | "
                 f"{_fmt(r['gap'], '+.4f')} {'' if not gv else f'[{gv[0]:+.4f}, {gv[1]:+.4f}]'} |")
  for p, c in zip(analysis["predictions"], analysis["checks"]):
    miv, liv = p.get("multiplier_interval"), p.get("moe_loss_interval")
    lines += ["", f"### Prediction at C = {p['C']:.3g}", "",
              f"- multiplier: {_fmt(p['multiplier'], '.2f')} "
              f"{'' if not miv else f'[{miv[0]:.2f}, {miv[1]:.2f}]'} (log-linear trend in C)",
              f"- MoE loss at its predicted N_opt {_fmt(p['moe_N_opt'], '.3g')}: "
              f"{_fmt(p['moe_loss'])} {'' if not liv else f'[{liv[0]:.4f}, {liv[1]:.4f}]'}"]
    if c.get("achieved_loss") is not None:
      rel_error = c.get("rel_error")
      lines += [f"- check run {c['run_id']} (N = {c['params']:.3g}): loss "
                f"{c['achieved_loss']:.4f}, relative error "
                f"{_fmt(rel_error and 100 * rel_error, '+.2f')}%, "
                + {True: "inside the interval", False: "OUTSIDE the interval",
                   None: "no interval"}[c.get("inside")] + "; its multiplier "
                f"{_fmt(c.get('achieved_multiplier'), '.2f')} ({c.get('achieved_method')})."]
    else:
      lines += ["- check run: not trained yet."]
  return lines + [""]


def plan_check_run(specs: dict, prediction: dict, multiplier_k: float):
  """The MoE run at K x the largest budget, sized by the MoE optima's N ~ C^a fit."""
  from experiments.scaling import extrapolate
  spec = specs["moe"]
  if not prediction.get("moe_N_opt"):
    raise ValueError("the MoE optima do not give an N ~ C^a fit (need >= 2 budgets)")
  shape, stats = extrapolate.nearest_shape(spec, extrapolate.candidate_shapes(spec),
                                      prediction["moe_N_opt"])
  budget = prediction["C"]
  label = f"x{multiplier_k:g}_c{shapes_lib.budget_label(budget)}"
  return extrapolate.run_for(spec, 0, "predict", budget, shape, stats,
                              f"moe_predict_{label}_{shape.name}")


def run_moe(specs: dict, workdir: str, *, predict: float | None = None, train_fn=None,
            **options) -> dict:
  """The sweep and report; with `predict`, then the check run and the report again."""
  import functools
  import json
  report_fn = functools.partial(write_moe_report, predict=predict)
  out = chinchilla.run_experiment(specs["dense"], workdir, report_fn=report_fn,
                                  runs=plan(specs), train_fn=train_fn, **options)
  if not predict or not out["paths"] or options.get("analyze_only"):
    return out
  with open(out["paths"]["comparison_json"]) as f:
    prediction = json.load(f)["predictions"][0]
  run = plan_check_run(specs, prediction, predict)
  status = sweep_lib.run_sweep([run], workdir, train_fn=train_fn)
  out["check"] = {"run": run, "status": status}
  if status["interrupted"]:
    out["status"] = dict(out["status"] or {}, interrupted=status["interrupted"])
    return out
  out["paths"] = report_fn(specs["dense"], plan(specs), workdir,
                           is_smoke=specs["dense"].name == "smoke",
                           bootstrap=options.get("bootstrap", 200), check_runs=[run])
  return out


def _launch() -> dict:
  preset = flags.FLAGS.preset
  spec = chinchilla.spec_from_flags(moe_preset(preset))
  specs = family_specs(spec, flags.FLAGS.n_experts, flags.FLAGS.experts_per_token,
                       flags.FLAGS.capacity_factor)
  options = chinchilla.cli_options(preset)
  multipliers = options.pop("predict")
  options.pop("predict_approach"), options.pop("mis_size")
  if len(multipliers) > 1:
    raise ValueError("moe_vs_dense checks one prediction: pass a single --predict=K")
  return run_moe(specs, flags.FLAGS.workdir, predict=multipliers[0] if multipliers else None,
                 **options)


def main(argv):
  chinchilla.run_from_cli(argv, "moe_vs_dense", _launch)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["preset", "workdir"])
  app.run(main)
