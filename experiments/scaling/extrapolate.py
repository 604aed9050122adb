"""Held-out extrapolation runs: train what a fitted scaling law predicts, and score it.

After a sweep is fitted, `plan_predictions` sizes, for each multiplier K, the compute-optimal
model at K x the largest swept budget (the family member whose N is nearest, in ln N, to the
predicted N_opt; same aspect ratio, LR rule, warmup, cosine schedule, batch rule and eval
windows as the sweep), plus one deliberately mis-sized run at the smallest K: the same
compute with N off by `mis_size` (larger; smaller when the larger model would get too few
steps). `score_predictions` compares each run's held-out loss with the loss predicted for the
N and D actually trained (approach 3's L(N, D); approach 2's frontier when approach 3 is
missing), and the mis-sized run's loss gap with the predicted penalty.

Data rule: like the sweep, each run reads fresh tokens in one pass when the corpus allows;
budgets past the corpus repeat it (recorded as epochs and flagged in the report), since the
point of the run is the extrapolation.
"""

import math
import os

from experiments.scaling import predict as predict_lib
from experiments.scaling import shapes as shapes_lib
from experiments.scaling import sweep as sweep_lib
from experiments.scaling.shapes import SweepSpec

KINDS = ("predict", "missized")
SIZING_APPROACHES = ("approach3", "approach2", "approach1")


def candidate_shapes(spec: SweepSpec, width_step: int = 8) -> list:
  """The family beyond the sweep's grid: every width_step-multiple width up to 8x the widest."""
  widths = set(spec.d_models) | set(range(width_step * 2, 8 * max(spec.d_models) + 1,
                                          width_step))
  return shapes_lib.shape_family(sorted(widths), spec.aspect, spec.head_dim)


def nearest_shape(spec: SweepSpec, candidates: list, target_n: float):
  best = min(candidates, key=lambda s: abs(math.log(shapes_lib.shape_stats(spec, s)["params"]
                                                    / target_n)))
  return best, shapes_lib.shape_stats(spec, best)


def sizing_approach(analysis: dict, preferred: str = "approach3") -> str:
  order = (preferred,) + tuple(a for a in SIZING_APPROACHES if a != preferred)
  for name in order:
    section = analysis.get(name) or {}
    if "skipped" not in section and section.get("a") is not None:
      return name
  raise ValueError("no approach produced a fit; the sweep cannot size a prediction run")


def run_for(spec, index, kind, budget, shape, stats, run_id):
  batch = shapes_lib.group_batch(spec, budget, [stats])
  return shapes_lib.make_run(spec, index, kind, budget, shape, stats, batch, run_id=run_id)


def plan_predictions(spec: SweepSpec, analysis: dict, multipliers, *,
                     approach: str = "approach3", mis_size: float = 4.0) -> tuple:
  """(runs, plan): the prediction runs and, per run, the prediction it tests."""
  if not multipliers:
    return [], []
  if any(not k > 0 for k in multipliers):
    raise ValueError(f"--predict multipliers must be positive, got {list(multipliers)}")
  if mis_size <= 1:
    raise ValueError(f"--mis_size must be > 1 (a factor off in N), got {mis_size}")
  name = sizing_approach(analysis, approach)
  candidates = candidate_shapes(spec)
  top = max(spec.budgets)
  runs, plan = [], []
  for k in sorted(set(float(k) for k in multipliers)):
    budget = k * top
    pred = predict_lib.predict(analysis, budget)
    n_opt = pred[name]["n_opt"]["value"]
    shape, stats = nearest_shape(spec, candidates, n_opt)
    label = f"x{k:g}_c{shapes_lib.budget_label(budget)}"
    run = run_for(spec, len(runs), "predict", budget, shape, stats,
                   f"{spec.run_prefix}predict_{label}_{shape.name}")
    runs.append(run)
    plan.append({"run_id": run.run_id, "kind": "predict", "multiplier": k, "budget": budget,
                 "sized_by": name, "prediction": pred})
    if len(runs) == 1:
      for factor in (mis_size, 1.0 / mis_size):
        mshape, mstats = nearest_shape(spec, candidates, n_opt * factor)
        try:
          mis = run_for(spec, len(runs), "missized", budget, mshape, mstats,
                         f"{spec.run_prefix}missized_{label}_{mshape.name}")
        except ValueError:
          continue
        if mshape != shape:
          runs.append(mis)
          plan.append({"run_id": mis.run_id, "kind": "missized", "multiplier": k,
                       "budget": budget, "sized_by": name, "n_factor": factor,
                       "reference": run.run_id, "prediction": pred})
          break
  return runs, plan


def _predicted_loss(analysis, name, pred, params, tokens, noise):
  if (analysis.get("approach3") or {}).get("a") is not None:
    entry, how = predict_lib.loss_at(analysis, params, tokens), "approach3 L(N, D)"
  elif "loss" in pred.get(name, {}):
    entry, how = pred[name]["loss"], f"{name} frontier at C"
  else:
    return None, "none"
  if noise:
    entry = predict_lib.widen_by_noise(entry, noise, analysis.get("confidence", 0.95))
  return entry, how


def score_predictions(analysis: dict, runs, plan, results: dict, train_tokens=None) -> list:
  """One row per prediction run: predicted vs achieved loss, errors, inside the interval."""
  noise = (analysis.get("seed_noise") or {}).get("std") or 0.0
  by_id = {r.run_id: r for r in runs}
  rows = []
  for item in plan:
    run, result = by_id[item["run_id"]], results.get(item["run_id"])
    pred, name = item["prediction"], item["sized_by"]
    entry, how = _predicted_loss(analysis, name, pred, run.params, run.tokens, noise)
    if item["kind"] == "missized" and not how.startswith("approach3"):
      entry, how = None, "none (the loss of an off-optimum N needs approach 3's L(N, D))"
    achieved = result and result["loss"]
    row = {"run_id": run.run_id, "kind": item["kind"], "multiplier": item["multiplier"],
           "budget": item["budget"], "sized_by": name, "params": run.params,
           "tokens": run.tokens, "n_opt": pred[name]["n_opt"], "d_opt": pred[name]["d_opt"],
           "predicted_loss": entry, "predicted_from": how, "achieved_loss": achieved,
           "epochs": (run.tokens / train_tokens) if train_tokens else None,
           "wall_time_s": result and result["wall_time_s"]}
    if achieved is not None and entry and entry.get("value") is not None:
      err = achieved - entry["value"]
      iv = entry.get("interval")
      row.update(abs_error=err, rel_error=err / achieved,
                 inside=None if iv is None else bool(iv[0] <= achieved <= iv[1]))
    if item["kind"] == "missized":
      ref = by_id[item["reference"]]
      ref_result = results.get(ref.run_id)
      row["n_factor"] = item["n_factor"]
      row["reference"] = ref.run_id
      if (analysis.get("approach3") or {}).get("a") is not None:
        pen = predict_lib.penalty(analysis, (ref.params, run.params), (ref.tokens, run.tokens))
        if noise:  # two runs' seed noise on a difference
          pen = predict_lib.widen_by_noise(pen, noise * math.sqrt(2),
                                           analysis.get("confidence", 0.95))
        row["predicted_penalty"] = pen
      if achieved is not None and ref_result and ref_result["loss"] is not None:
        row["achieved_penalty"] = achieved - ref_result["loss"]
        iv = (row.get("predicted_penalty") or {}).get("interval")
        row["penalty_inside"] = None if iv is None else bool(
            iv[0] <= row["achieved_penalty"] <= iv[1])
    rows.append(row)
  return rows


def _fmt(x, spec=".4g"):
  return "n/a" if x is None else format(x, spec)


def markdown(rows: list, confidence: float) -> list:
  """The report section: prediction table, mis-sized penalty, data reuse."""
  lines = ["## Predictions tested by held-out runs", "",
           f"Each run is trained at K x the largest swept budget with the N the fit predicts "
           f"(nearest family member); predicted loss for the N and D trained, "
           f"{100 * confidence:.0f}% bootstrap interval including one run's seed noise when "
           "measured.", "",
           "| K | C | sized by: N_opt [interval] | N trained | D | predicted loss [interval] | "
           "achieved | error | rel. error | inside |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if r["kind"] != "predict":
      continue
    lines.append(
        f"| {r['multiplier']:g} | {r['budget']:.3g} | {r['sized_by']}: "
        f"{predict_lib.format_entry(r['n_opt'])} | {r['params']:.3g} | {r['tokens']:.3g} | "
        f"{predict_lib.format_entry(r['predicted_loss'], '.4f')} | "
        f"{_fmt(r['achieved_loss'])} | {_fmt(r.get('abs_error'), '+.4f')} | "
        f"{_fmt(r.get('rel_error') and 100 * r['rel_error'], '+.2f')}% | "
        f"{'n/a' if r.get('inside') is None else ('yes' if r['inside'] else 'NO')} |")
  sources = sorted({r["predicted_from"] for r in rows if r["kind"] == "predict"})
  lines += ["", f"Predicted losses from: {'; '.join(sources)}."]
  for r in rows:
    if r["kind"] != "missized":
      continue
    lines += ["", f"Mis-sized run {r['run_id']}: N = {r['params']:.3g} "
              f"({r['n_factor']:g}x the compute-optimal run {r['reference']}), same compute. "
              f"Predicted penalty {predict_lib.format_entry(r.get('predicted_penalty'), '+.4f')}"
              f" nats; achieved {_fmt(r.get('achieved_penalty'), '+.4f')} nats"
              + ("" if r.get("penalty_inside") is None else
                 f" ({'inside' if r['penalty_inside'] else 'OUTSIDE'} the interval)") + "."]
  repeated = [r for r in rows if (r.get("epochs") or 0) > 1]
  if repeated:
    lines += ["", "Data reuse: " + ", ".join(f"{r['run_id']} reads {r['epochs']:.2f} epochs"
                                             for r in repeated) +
              " of the training split (the sweep itself never repeats tokens)."]
  return lines + [""]


def run_predictions(spec: SweepSpec, workdir: str, analysis: dict, multipliers, *,
                    approach: str = "approach3", mis_size: float = 4.0, train_fn=None,
                    train_tokens=None) -> dict:
  """Plans, trains (skipping finished runs) and scores the prediction runs.

  Returns {"runs", "status", "rows", "paths"}; rows/paths are empty when interrupted.
  """
  runs, plan = plan_predictions(spec, analysis, multipliers, approach=approach,
                                mis_size=mis_size)
  if not runs:
    return {"runs": [], "status": None, "rows": [], "paths": {}}
  print("prediction runs:\n" + shapes_lib.describe_plan(runs), flush=True)
  status = sweep_lib.run_sweep(runs, workdir, train_fn=train_fn)
  out = {"runs": runs, "status": status, "rows": [], "paths": {}}
  if status["interrupted"]:
    return out
  results = {r["run_id"]: r for r in sweep_lib.collect_results(workdir, runs)[0]}
  out["rows"] = score_predictions(analysis, runs, plan, results, train_tokens)
  path = os.path.join(workdir, "predictions.json")
  sweep_lib.write_json_atomic(path, {"multipliers": sorted(set(map(float, multipliers))),
                                     "rows": out["rows"],
                                     "results": [results[r.run_id] for r in runs]})
  out["paths"]["predictions_json"] = path
  return out
