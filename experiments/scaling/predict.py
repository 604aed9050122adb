"""Predictions from a fit: compute-optimal N, D and loss at any budget, with bootstrap intervals.

Works on the dict `approaches.analyze` returns (or its analysis.json), which keeps every
bootstrap resample's fitted law under each approach's "samples":
- approaches 1 and 2: N_opt = K_N C^a and D_opt = K_D C^b (the fitted power laws), and the
  loss frontier L_opt(C) = E + A (C/C_ref)^-gamma through their per-budget optimum losses;
- approach 3: the parametric law L(N, D) = E + A/N^alpha + B/D^beta, its closed-form optimum
  (`laws.compute_optimal`, with C = k N D and k the runs' median FLOPs/(N D)), and the loss of
  any (N, D) (`loss_at`), e.g. a deliberately mis-sized model.
An interval is the percentile interval of the prediction over the resamples (the resamples
redraw runs within budgets and, with seeds, each point's seeds). Intervals cover the fit's
uncertainty under the assumed law, not a wrong law: extrapolation far beyond the sweep, or a
law of another form, can be wrong by more than the interval says.
"""

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from experiments.scaling import laws

APPROACHES = ("approach1", "approach2", "approach3")


def _interval(samples, confidence: float) -> Optional[list]:
  s = np.asarray(samples, np.float64)
  s = s[np.isfinite(s)]
  if s.size < 2:
    return None
  tail = 50.0 * (1.0 - confidence)
  return [float(np.percentile(s, tail)), float(np.percentile(s, 100.0 - tail))]


def _value(point, samples, confidence) -> dict:
  point = float(point) if point is not None and np.isfinite(point) else None
  return {"value": point, "interval": None if samples is None else _interval(samples,
                                                                              confidence)}


def _ok(section) -> bool:
  return isinstance(section, Mapping) and "skipped" not in section and section.get("a") is not None


def _power_law_prediction(section: Mapping, compute: float, confidence: float) -> dict:
  log_c = math.log(compute)
  samples = section.get("samples") or {}

  def law(coef_key, exp_key, point_coef, point_exp):
    point = (None if point_coef is None or point_exp is None
             else point_coef * compute ** point_exp)
    s = None
    if samples.get(exp_key) is not None:
      s = np.exp(np.asarray(samples[coef_key], np.float64) +
                 np.asarray(samples[exp_key], np.float64) * log_c)
    return point, s

  n, n_s = law("log_N_coefficient", "a", section.get("N_coefficient"), section.get("a"))
  d, d_s = law("log_D_coefficient", "b", section.get("D_coefficient"), section.get("b"))
  out = {"n_opt": _value(n, n_s, confidence), "d_opt": _value(d, d_s, confidence)}
  frontier = section.get("frontier")
  if frontier and frontier.get("gamma") is not None:
    point = float(laws.frontier_loss(compute, frontier))
    s = None
    if samples.get("frontier_gamma") is not None:
      s = laws.frontier_loss(compute, {
          "E": np.asarray(samples["frontier_E"], np.float64),
          "A": np.asarray(samples["frontier_A"], np.float64),
          "gamma": np.asarray(samples["frontier_gamma"], np.float64),
          "log_c_ref": frontier["log_c_ref"]})
    out["loss"] = _value(point, s, confidence)
  return out


def _theta(section: Mapping) -> np.ndarray:
  """The fitted (a, b, e, alpha, beta); older analyses carry only E, A, B, alpha, beta."""
  if section.get("theta") is not None:
    return np.asarray(section["theta"], np.float64)
  return laws.law_to_theta(section)


def _thetas(section: Mapping) -> np.ndarray:
  t = (section.get("samples") or {}).get("theta")
  return np.zeros((0, 5)) if t is None else np.asarray(t, np.float64).reshape(-1, 5)


def _law_arrays(theta_s5: np.ndarray) -> dict:
  with np.errstate(over="ignore", invalid="ignore"):
    return {"A": np.exp(theta_s5[:, 0]), "B": np.exp(theta_s5[:, 1]),
            "E": np.exp(theta_s5[:, 2]), "alpha": theta_s5[:, 3], "beta": theta_s5[:, 4]}


def _optimum_samples(theta_s5: np.ndarray, compute: float, k: float) -> dict:
  """Vectorised `laws.compute_optimal` over resampled laws (NaN where a law has none)."""
  law = _law_arrays(theta_s5)
  with np.errstate(all="ignore"):
    good = (law["alpha"] > 0) & (law["beta"] > 0) & np.isfinite(law["A"]) & np.isfinite(law["B"])
    s = law["alpha"] + law["beta"]
    g = (law["alpha"] * law["A"] / (law["beta"] * law["B"])) ** (1.0 / s)
    n = g * (compute / k) ** (law["beta"] / s)
    d = (compute / k) ** (law["alpha"] / s) / g
    loss = laws.loss(n, d, law)
  nan = lambda v: np.where(good, v, np.nan)
  return {"n_opt": nan(n), "d_opt": nan(d), "loss": nan(loss)}


def _parametric_prediction(section: Mapping, compute: float, confidence: float) -> dict:
  k = section["flops_per_param_token"]
  theta = _theta(section)[None]
  point = _optimum_samples(theta, compute, k)
  samples = _optimum_samples(_thetas(section), compute, k)
  return {key: _value(point[key][0], samples[key] if len(_thetas(section)) else None,
                      confidence) for key in ("n_opt", "d_opt", "loss")}


def predict(analysis: Mapping, compute: float, *, confidence: Optional[float] = None,
            noise_std: Optional[float] = None) -> dict:
  """{"compute", "confidence", "extrapolation_decades", approach1/2/3: {n_opt, d_opt[, loss]}}
  with each entry {"value", "interval"}; an approach the fit skipped is {"skipped": reason}.

  noise_std (default: the analysis's seed noise, if it measured one) widens the loss
  intervals by one run's seed-to-seed noise, since a single new run is what gets compared.
  """
  if not compute > 0 or not math.isfinite(compute):
    raise ValueError(f"the budget to predict must be a positive number of FLOPs, got {compute}")
  conf = confidence or analysis.get("confidence", 0.95)
  if noise_std is None:
    noise_std = ((analysis.get("seed_noise") or {}).get("std")) or 0.0
  budgets = analysis.get("budgets") or []
  out = {"compute": float(compute), "confidence": conf, "seed_noise_std": noise_std,
         "extrapolation_decades": (math.log10(compute / max(budgets)) if budgets else None)}
  for name in APPROACHES:
    section = analysis.get(name)
    if not _ok(section):
      out[name] = {"skipped": (section or {}).get("skipped") or
                   (section or {}).get("warning") or
                   "; ".join((section or {}).get("warnings") or []) or "no fit"}
      continue
    pred = (_parametric_prediction(section, compute, conf) if name == "approach3"
            else _power_law_prediction(section, compute, conf))
    if "loss" in pred and noise_std:
      pred["loss"] = widen_by_noise(pred["loss"], noise_std, conf)
    out[name] = pred
  return out


def widen_by_noise(entry: dict, noise_std: float, confidence: float) -> dict:
  """The interval of (predicted loss + a run's seed noise), by the normal approximation of the
  fit interval's width added in quadrature with the noise."""
  iv = entry.get("interval")
  if iv is None or entry.get("value") is None:
    return entry
  z = _z(confidence)
  lo, hi = entry["value"] - iv[0], iv[1] - entry["value"]
  lo, hi = (math.sqrt(max(lo, 0.0) ** 2 + (z * noise_std) ** 2),
            math.sqrt(max(hi, 0.0) ** 2 + (z * noise_std) ** 2))
  return dict(entry, interval=[entry["value"] - lo, entry["value"] + hi],
              fit_interval=iv)


def _z(confidence: float) -> float:
  from scipy import stats
  return float(stats.norm.ppf(0.5 + confidence / 2))


def loss_at(analysis: Mapping, params: float, tokens: float, *,
            confidence: Optional[float] = None) -> dict:
  """Approach 3's predicted loss of a model with `params` trained on `tokens`, with interval."""
  section = analysis.get("approach3")
  if not _ok(section):
    raise ValueError("loss_at needs a converged approach 3 fit; the analysis has none ("
                     f"{(section or {}).get('skipped', 'no frontier')})")
  conf = confidence or analysis.get("confidence", 0.95)
  point = laws.loss(params, tokens, laws.theta_to_law(_theta(section)))
  thetas = _thetas(section)
  samples = laws.loss(params, tokens, _law_arrays(thetas)) if len(thetas) else None
  return _value(point, samples, conf)


def penalty(analysis: Mapping, params: Sequence[float], tokens: Sequence[float], *,
            confidence: Optional[float] = None) -> dict:
  """Approach 3's predicted L(params[1], tokens[1]) - L(params[0], tokens[0]) (paired over
  the resamples, so the shared uncertainty cancels), with interval."""
  section = analysis.get("approach3")
  if not _ok(section):
    raise ValueError("penalty needs an approach 3 fit")
  conf = confidence or analysis.get("confidence", 0.95)
  law = laws.theta_to_law(_theta(section))
  point = laws.loss(params[1], tokens[1], law) - laws.loss(params[0], tokens[0], law)
  thetas = _thetas(section)
  samples = None
  if len(thetas):
    arr = _law_arrays(thetas)
    samples = laws.loss(params[1], tokens[1], arr) - laws.loss(params[0], tokens[0], arr)
  return _value(point, samples, conf)


def predict_many(analysis: Mapping, budgets: Sequence[float], **kw) -> list:
  return [predict(analysis, float(c), **kw) for c in budgets]


def format_prediction(pred: Mapping) -> str:
  """A few-line table of one prediction."""
  conf = pred["confidence"]
  lines = [f"prediction at C = {pred['compute']:.4g} FLOPs "
           f"({_fmt(pred['extrapolation_decades'], '+.2f')} decades past the largest budget; "
           f"{100 * conf:.0f}% intervals)",
           f"{'approach':<11}{'N_opt':>26}{'D_opt':>26}{'loss':>27}"]
  for name in APPROACHES:
    p = pred[name]
    if "skipped" in p:
      lines.append(f"{name:<11}skipped: {p['skipped']}")
      continue
    cells = [format_entry(p.get(key), ".3g" if key != "loss" else ".4f")
             for key in ("n_opt", "d_opt", "loss")]
    lines.append(f"{name:<11} {cells[0]:>25} {cells[1]:>25} {cells[2]:>26}")
  return "\n".join(lines)


def format_entry(entry, spec=".3g") -> str:
  if not entry:
    return "-"
  iv = entry.get("interval")
  ivs = f" [{_fmt(iv[0], spec)}, {_fmt(iv[1], spec)}]" if iv else ""
  return _fmt(entry.get("value"), spec) + ivs


def _fmt(x, spec) -> str:
  return "n/a" if x is None else format(x, spec)
