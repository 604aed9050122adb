"""The MoE effective compute multiplier with seed-bootstrap intervals, and its extrapolation.

`compare_fn(results)` (experiments.moe_vs_dense.compare) turns IsoFLOP results into per-budget
multipliers. Here the sweep's points (family, budget, N) are seed-averaged first; each
bootstrap resample redraws every point's seeds with replacement (points with one seed get the
pooled relative seed noise as log-normal noise, as in experiments/scaling/runs.py) and reruns
the comparison, so the intervals say how much the multipliers move with run-to-run noise.

Prediction at a larger budget C*: log multiplier is fitted linearly in log C (a constant with
one budget), per resample; the MoE loss predicted at C* is the dense envelope's power law
L = A C^-alpha evaluated at m(C*) C*. One MoE run at C*, sized by the MoE optima's N ~ C^a
fit, checks it.
"""

import math
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np

from experiments.scaling.predict import widen_by_noise

POINT_KEYS = ("family", "budget", "params")


def _family(result: dict) -> str:
  return result["run_id"].split("_", 1)[0]


def seed_points(results: Sequence[dict]) -> list:
  """IsoFLOP results grouped into points: [{..first result.., "seed_losses": [...]}]."""
  groups = defaultdict(list)
  for r in results:
    if r.get("kind", "isoflop") == "isoflop" and r["loss"] is not None:
      groups[(_family(r), r["budget"], r["params"])].append(r)
  return [dict(rs[0], seed_losses=[r["loss"] for r in rs]) for rs in groups.values()]


def pooled_relative_std(points: list) -> float | None:
  dof = sum(len(p["seed_losses"]) - 1 for p in points)
  if dof <= 0:
    return None
  ss = sum(float(((np.array(p["seed_losses"]) / np.mean(p["seed_losses"]) - 1) ** 2).sum())
           for p in points)
  return math.sqrt(ss / dof)


def _with_losses(points: list, losses) -> list:
  return [dict(p, loss=float(l)) for p, l in zip(points, losses)]


def resampled_losses(points: list, n: int, rng: np.random.Generator) -> np.ndarray:
  rel = pooled_relative_std(points) or 0.0
  out = np.empty((n, len(points)))
  for j, p in enumerate(points):
    vals = np.asarray(p["seed_losses"], float)
    if len(vals) > 1:
      out[:, j] = vals[rng.integers(0, len(vals), size=(n, len(vals)))].mean(1)
    else:
      out[:, j] = vals[0] * (np.exp(rel * rng.standard_normal(n)) if rel else 1.0)
  return out


def _interval(samples, confidence):
  s = np.asarray(samples, float)
  s = s[np.isfinite(s)]
  if s.size < 2:
    return None
  tail = 50 * (1 - confidence)
  return [float(np.percentile(s, tail)), float(np.percentile(s, 100 - tail))]


def _trend(comparison: dict) -> dict | None:
  """log m = c0 + c1 log C over budgets with a multiplier (c1 = 0 with one budget)."""
  rows = [r for r in comparison["budgets"] if r["multiplier"]]
  if not rows:
    return None
  x = np.log([r["C"] for r in rows])
  y = np.log([r["multiplier"] for r in rows])
  if len(rows) == 1:
    return {"c0": float(y[0]), "c1": 0.0}
  c1, c0 = np.polyfit(x, y, 1)
  return {"c0": float(c0), "c1": float(c1)}


def _moe_n_law(comparison: dict) -> dict | None:
  pts = [(m["C"], m["N_opt"]) for m in comparison["moe"]]
  if len(pts) < 2:
    return None
  a, c0 = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)
  return {"a": float(a), "log_coefficient": float(c0)}


def _predict_one(comparison: dict, compute: float) -> dict:
  trend, law = _trend(comparison), comparison["dense_power_law"]
  out = {"multiplier": None, "moe_loss": None, "dense_loss": None, "moe_N_opt": None}
  if trend:
    m = math.exp(trend["c0"] + trend["c1"] * math.log(compute))
    out["multiplier"] = m
    if law:
      out["moe_loss"] = law["A"] * (m * compute) ** -law["alpha"]
  if law:
    out["dense_loss"] = law["A"] * compute ** -law["alpha"]
  n_law = _moe_n_law(comparison)
  if n_law:
    out["moe_N_opt"] = math.exp(n_law["log_coefficient"] + n_law["a"] * math.log(compute))
  return out


def analyze(results: Sequence[dict], compare_fn: Callable, *, bootstrap: int = 200,
            seed: int = 0, confidence: float = 0.95, predict_at: Sequence[float] = ()) -> dict:
  """{"comparison" (seed-averaged), "seed_noise", "intervals" per budget, "predictions"}."""
  points = seed_points(results)
  means = [float(np.mean(p["seed_losses"])) for p in points]
  comparison = compare_fn(_with_losses(points, means))
  out = {"comparison": comparison, "confidence": confidence, "bootstrap": bootstrap,
         "seeds_per_point": [min(len(p["seed_losses"]) for p in points),
                             max(len(p["seed_losses"]) for p in points)] if points else None,
         "seed_noise_relative_std": pooled_relative_std(points)}
  if not out["seed_noise_relative_std"]:  # one seed (or identical seeds): nothing to redraw
    bootstrap = out["bootstrap"] = 0
  losses = resampled_losses(points, bootstrap, np.random.default_rng(seed)) if bootstrap else []
  samples = [compare_fn(_with_losses(points, row)) for row in losses]
  out["intervals"] = []
  for j, row in enumerate(comparison["budgets"]):
    m = [s["budgets"][j]["multiplier"] if j < len(s["budgets"]) else None for s in samples]
    g = [s["budgets"][j]["gap"] if j < len(s["budgets"]) else None for s in samples]
    out["intervals"].append({
        "C": row["C"], "multiplier": row["multiplier"],
        "multiplier_interval": _interval([np.nan if v is None else v for v in m], confidence),
        "gap": row["gap"],
        "gap_interval": _interval([np.nan if v is None else v for v in g], confidence)})
  out["predictions"] = []
  for c in predict_at:
    point = _predict_one(comparison, c)
    draws = [_predict_one(s, c) for s in samples]
    pred = {"C": float(c), **point,
            **{f"{k}_interval": _interval([np.nan if d[k] is None else d[k] for d in draws],
                                          confidence)
               for k in ("multiplier", "moe_loss", "dense_loss")}}
    rel = out["seed_noise_relative_std"]
    if rel and pred["moe_loss"] is not None:  # one new run carries one run's seed noise
      widened = widen_by_noise({"value": pred["moe_loss"],
                                "interval": pred["moe_loss_interval"]},
                               rel * pred["moe_loss"], confidence)
      pred["moe_loss_interval"] = widened["interval"]
    out["predictions"].append(pred)
  return out


def score(prediction: dict, result: dict | None, comparison: dict,
          dense_compute_for_loss: Callable) -> dict:
  """The check run's achieved MoE loss against the predicted one, and its multiplier."""
  out = {"C": prediction["C"], "run_id": result and result["run_id"],
         "params": result and result["params"], "achieved_loss": result and result["loss"],
         "predicted_loss": prediction["moe_loss"],
         "predicted_loss_interval": prediction.get("moe_loss_interval"),
         "predicted_multiplier": prediction["multiplier"],
         "predicted_multiplier_interval": prediction.get("multiplier_interval")}
  if result and result["loss"] is not None:
    c_eq, method = dense_compute_for_loss(result["loss"], comparison["dense"],
                                          comparison["dense_power_law"])
    out["achieved_multiplier"] = c_eq and c_eq / prediction["C"]
    out["achieved_method"] = method
    if prediction["moe_loss"] is not None:
      out["rel_error"] = (result["loss"] - prediction["moe_loss"]) / result["loss"]
    iv = prediction.get("moe_loss_interval")
    out["inside"] = None if iv is None else bool(iv[0] <= result["loss"] <= iv[1])
  return out
