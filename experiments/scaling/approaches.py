"""The three Chinchilla approaches (Hoffmann et al. 2022, section 3) with bootstrap intervals.

Input: run records (see `runs.normalize_runs`: params, tokens, loss, optional flops, budget,
non_embedding_params, non_embedding_flops). Every public function returns plain
JSON-serialisable dicts.

Bootstraps resample runs with replacement *within each budget* (so every resample keeps the
sweep's design), redraw each point's seeds when the runs have several (runs.bootstrap_losses),
and report percentile intervals; they are seeded and deterministic. Each bootstrapped approach
also keeps its resamples' fitted laws under "samples" (power-law coefficients and the loss
frontier for approaches 1-2, theta for approach 3): experiments/scaling/predict.py turns them
into prediction intervals at any budget.
"""

import math
from typing import Optional

import numpy as np

from experiments.scaling import laws
from experiments.scaling.parametric import HUBER_DELTA, fit_parametric
from experiments.scaling.runs import (InsufficientDataError, RunTable, bootstrap_losses,
                                      normalize_runs, seed_noise, to_jsonable)

__all__ = ["InsufficientDataError", "RunTable", "normalize_runs", "to_jsonable", "approach1",
           "approach2", "approach3", "analyze", "unmet_requirements"]

MIN_POINTS_APPROACH1 = 2
MIN_BUDGETS_APPROACH2 = 3
MIN_RUNS_PER_BUDGET = 3
MIN_RUNS_APPROACH3 = 5
# Approach 3 starts L-BFGS from the 256 best (by initial objective) of Chinchilla's 4500 grid
# points: on three synthetic sweeps (two laws, 0.5-2% noise) this found the same optimum as the
# full grid at 1/10-1/30 of the time. grid="full" is the exact Hoffmann et al. / Epoch AI recipe.
DEFAULT_GRID = 256


# ----------------------------------------------------------------------------- helpers


def _loglog_slopes(x_bg: np.ndarray, y_bg: np.ndarray, m_bg: np.ndarray):
  """Per-row least-squares slope and intercept of y on x over the masked columns."""
  m = m_bg.astype(np.float64)
  cnt = m.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    xm = np.where(m_bg, x_bg, 0.0).sum(1) / cnt
    ym = np.where(m_bg, y_bg, 0.0).sum(1) / cnt
    dx = np.where(m_bg, x_bg - xm[:, None], 0.0)
    dy = np.where(m_bg, y_bg - ym[:, None], 0.0)
    sxx = (dx * dx).sum(1)
    slope = np.where((cnt >= 2) & (sxx > 0), (dx * dy).sum(1) / sxx, np.nan)
  return slope, ym - slope * xm


def _power_law(c: np.ndarray, y: np.ndarray) -> dict:
  """y = coefficient * c^exponent, least squares in log-log."""
  x, ly = np.log(c)[None], np.log(y)[None]
  slope, icpt = _loglog_slopes(x, ly, np.ones_like(x, dtype=bool))
  resid = ly - (icpt[:, None] + slope[:, None] * x)
  ss = float(((ly - ly.mean()) ** 2).sum())
  r2 = 1.0 - float((resid ** 2).sum()) / ss if ss > 0 else math.nan
  return {"exponent": float(slope[0]), "coefficient": float(np.exp(icpt[0])), "r2": r2}


def _interval(samples: np.ndarray, confidence: float) -> Optional[list]:
  s = np.asarray(samples, dtype=np.float64)
  s = s[np.isfinite(s)]
  if s.size < 2:
    return None
  tail = 50.0 * (1.0 - confidence)
  return [float(np.percentile(s, tail)), float(np.percentile(s, 100.0 - tail))]


def _stratified_weights(table: RunTable, n: int, rng: np.random.Generator) -> np.ndarray:
  """(n, runs) resampling counts: runs drawn with replacement within each budget."""
  w = np.zeros((n, len(table)))
  for idx in table.groups():
    w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n)
  return w


def _budget_key(c: float) -> str:
  return f"{c:.4g}"


def _resampled_losses(table: RunTable, n: int, seed: int) -> np.ndarray:
  """(n, runs) losses of the bootstrap resamples: seeds redrawn per point (its own stream,
  so a table without seeds resamples exactly as before)."""
  return bootstrap_losses(table, n, np.random.default_rng([seed, 1]))


def _frontier_summary(log_c_bg, loss_bg, mask_bg) -> tuple:
  """(full-data frontier dict, resample columns) of L_opt(C) = E + A (C/C_ref)^-gamma; row 0
  of the inputs is the full data, the others bootstrap resamples."""
  fit = laws.fit_loss_frontier(log_c_bg, loss_bg, mask_bg)
  full = {"E": fit["E"][0], "A": fit["A"][0], "gamma": fit["gamma"][0],
          "log_c_ref": fit["log_c_ref"]}
  return full, {"frontier_E": fit["E"][1:], "frontier_A": fit["A"][1:],
                "frontier_gamma": fit["gamma"][1:]}


# ----------------------------------------------------------------------------- approach 1


def approach1(runs, *, count: str = "total", method: str = "per_budget", bootstrap: int = 0,
              seed: int = 0, confidence: float = 0.95) -> dict:
  """Lower envelope of loss vs FLOPs; fits N_opt ~ C^a and D_opt ~ C^b through it.

  method="per_budget": the lowest-loss run of each budget group (C = the group's budget, or
  the run's non-embedding flops under count="non_embedding"). method="envelope": every run
  that beats all runs with fewer FLOPs (the Pareto front; use it when rows are intermediate
  evaluations along training curves, as in Chinchilla's approach 1). Needs >= 2 points.
  """
  table = normalize_runs(runs)
  params, flops = table.columns(count)
  if method == "per_budget":
    idx = np.array([g[np.argmin(table.loss[g])] for g in table.groups()])
    c = table.budgets.copy() if count == "total" else flops[idx]
  elif method == "envelope":
    order = np.lexsort((table.loss, flops))
    running = np.minimum.accumulate(table.loss[order])
    best = np.concatenate([[True], table.loss[order][1:] < running[:-1]])
    idx = order[best]
    c = flops[idx]
  else:
    raise ValueError(f"approach1 method must be 'per_budget' or 'envelope', got {method!r}")
  if len(np.unique(c)) < MIN_POINTS_APPROACH1:
    raise InsufficientDataError(
        f"Approach 1 needs >= {MIN_POINTS_APPROACH1} distinct compute budgets on the "
        f"envelope; got {len(np.unique(c))}")
  n_opt, d_opt = params[idx], table.tokens[idx]
  fit_n, fit_d = _power_law(c, n_opt), _power_law(c, d_opt)
  out = {
      "count": count, "method": method,
      "points": [{"C": c[i], "N": n_opt[i], "D": d_opt[i], "loss": table.loss[idx[i]],
                  "tokens_per_param": d_opt[i] / n_opt[i], "run": int(idx[i])}
                 for i in np.argsort(c)],
      "a": fit_n["exponent"], "b": fit_d["exponent"], "N_coefficient": fit_n["coefficient"],
      "D_coefficient": fit_d["coefficient"], "r2_N": fit_n["r2"], "r2_D": fit_d["r2"],
  }
  if method == "per_budget":
    log_c = np.log(c)
    out["frontier"], _ = _frontier_summary(log_c[None], table.loss[idx][None], None)
  if bootstrap and method == "per_budget":
    w = _stratified_weights(table, bootstrap, np.random.default_rng(seed))
    loss_bn = np.where(w > 0, _resampled_losses(table, bootstrap, seed), np.inf)
    pick_bg = np.stack([g[np.argmin(loss_bn[:, g], axis=1)] for g in table.groups()], axis=1)
    lc = np.log(np.broadcast_to(c, pick_bg.shape) if count == "total" else flops[pick_bg])
    mask = np.ones_like(lc, dtype=bool)
    a_s, a_icpt = _loglog_slopes(lc, np.log(params[pick_bg]), mask)
    b_s, b_icpt = _loglog_slopes(lc, np.log(table.tokens[pick_bg]), mask)
    best_loss = np.take_along_axis(loss_bn, pick_bg, axis=1)
    _, frontier = _frontier_summary(np.concatenate([np.log(c)[None], lc]),
                                    np.concatenate([table.loss[idx][None], best_loss]),
                                    np.concatenate([mask[:1], mask]))
    out["bootstrap"] = {"n": bootstrap, "seed": seed, "confidence": confidence,
                        "a": _interval(a_s, confidence), "b": _interval(b_s, confidence)}
    out["samples"] = {"a": a_s, "log_N_coefficient": a_icpt, "b": b_s,
                      "log_D_coefficient": b_icpt, **frontier}
  return to_jsonable(out)


# ----------------------------------------------------------------------------- approach 2


def _isoflop_group(x, y, w_bn, log_f, nominal_c):
  """Weighted parabolas loss ~ c0 + c1 (x-xm) + c2 (x-xm)^2 for each weight row (y: one loss
  per run, or one row of losses per weight row); vertex etc."""
  xm = float(x.mean())
  xc = x - xm
  design = np.stack([np.ones_like(xc), xc, xc * xc], axis=1)
  uniq, inv = np.unique(x, return_inverse=True)
  support_bu = (w_bn @ np.eye(len(uniq))[inv]) > 0
  ok = support_bu.sum(1) >= 3
  gram = np.einsum("bi,ij,ik->bjk", w_bn, design, design)
  rhs = np.einsum("bi,ij->bj", w_bn * y, design)
  coef = np.full((len(w_bn), 3), np.nan)
  if ok.any():
    coef[ok] = np.linalg.solve(gram[ok], rhs[ok][..., None])[..., 0]
  upward = ok & (coef[:, 2] > 0)
  with np.errstate(invalid="ignore", divide="ignore"):
    d_star = np.where(upward, -coef[:, 1] / (2.0 * coef[:, 2]), np.nan)
  x_star = xm + d_star
  lo = np.where(support_bu, uniq[None], np.inf).min(1)
  hi = np.where(support_bu, uniq[None], -np.inf).max(1)
  inside = upward & (x_star >= lo) & (x_star <= hi)
  loss_opt = coef[:, 0] + coef[:, 1] * d_star + coef[:, 2] * d_star ** 2
  if nominal_c is not None:
    log_c = np.full(len(w_bn), math.log(nominal_c))
  else:
    mean_log_f = np.array([log_f[inv == u].mean() for u in range(len(uniq))])
    log_c = np.interp(x_star, uniq, mean_log_f)
  return {"center": xm, "coef": coef, "ok": ok, "upward": upward, "inside": inside,
          "log_n": x_star, "log_c": log_c, "loss_opt": loss_opt}


def _select_budgets(upward_bg, inside_bg, drop_flagged):
  clean = inside_bg if drop_flagged else upward_bg
  use_clean = clean.sum(1) >= 2
  mask = np.where(use_clean[:, None], clean, upward_bg)
  mask &= (mask.sum(1) >= 2)[:, None]
  return mask, use_clean


def approach2(runs, *, count: str = "total", drop_flagged: bool = True, bootstrap: int = 0,
              seed: int = 0, confidence: float = 0.95) -> dict:
  """IsoFLOP profiles: per budget a parabola of loss vs ln N; its vertex is N_opt(C).

  D_opt = C / (k N_opt) with k the budget's median flops/(N D) (k = 6 when flops default to
  6ND), so b = 1 - a up to variation of k. C is the nominal budget under count="total"; under
  count="non_embedding" it is the non-embedding flops interpolated (log-log, piecewise
  linear) at the vertex, since the runs of one budget differ in non-embedding compute.
  A budget is flagged when its parabola opens downward or its vertex lies outside the sampled
  N range; with drop_flagged the power laws use only clean budgets (falling back to every
  upward-opening budget, with a warning, when fewer than 2 are clean).
  Needs >= 3 budgets with >= 3 runs at distinct model sizes.
  """
  table = normalize_runs(runs)
  params, flops = table.columns(count)
  groups, skipped = [], []
  for g, idx in enumerate(table.groups()):
    if len(np.unique(params[idx])) < MIN_RUNS_PER_BUDGET:
      skipped.append({"C": table.budgets[g], "n_runs": len(idx),
                      "reason": f"fewer than {MIN_RUNS_PER_BUDGET} distinct model sizes"})
    else:
      groups.append((g, idx))
  if len(groups) < MIN_BUDGETS_APPROACH2:
    counts = {_budget_key(c): int((table.group == g).sum()) for g, c in enumerate(table.budgets)}
    raise InsufficientDataError(
        f"Approach 2 needs >= {MIN_BUDGETS_APPROACH2} compute budgets with >= "
        f"{MIN_RUNS_PER_BUDGET} runs (distinct model sizes) each; got {len(groups)} such "
        f"budget(s). Runs per budget: {counts}")
  n_boot = int(bootstrap)
  rng = np.random.default_rng(seed)
  w_all = np.concatenate([np.ones((1, len(table))),
                          _stratified_weights(table, n_boot, rng) if n_boot else
                          np.zeros((0, len(table)))])
  loss_all = np.concatenate([table.loss[None], _resampled_losses(table, n_boot, seed)])
  fits = []
  for g, idx in groups:
    nominal = table.budgets[g] if count == "total" else None
    fit = _isoflop_group(np.log(params[idx]), loss_all[:, idx], w_all[:, idx],
                         np.log(flops[idx]), nominal)
    fit["k"] = float(np.median(flops[idx] / (params[idx] * table.tokens[idx])))
    fits.append(fit)
  log_n = np.stack([f["log_n"] for f in fits], 1)
  log_c = np.stack([f["log_c"] for f in fits], 1)
  log_d = log_c - np.log([f["k"] for f in fits])[None] - log_n
  upward = np.stack([f["upward"] for f in fits], 1)
  inside = np.stack([f["inside"] for f in fits], 1)
  mask, used_clean = _select_budgets(upward, inside, drop_flagged)
  a_s, a_icpt = _loglog_slopes(log_c, log_n, mask)
  b_s, b_icpt = _loglog_slopes(log_c, log_d, mask)
  loss_opt = np.stack([f["loss_opt"] for f in fits], 1)
  frontier, frontier_samples = _frontier_summary(log_c, loss_opt, mask)

  warnings = []
  n_up, n_in = int(upward[0].sum()), int(inside[0].sum())
  if n_up < len(fits):
    warnings.append(f"{len(fits) - n_up}/{len(fits)} IsoFLOP parabolas open downward "
                    "(no minimum): widen or densify the model-size grid there")
  if n_in < n_up:
    warnings.append(f"{n_up - n_in}/{n_up} IsoFLOP minima lie outside the sampled model "
                    "sizes (extrapolated): shift the grid toward the minimum")
  if mask[0].any() and not used_clean[0]:
    warnings.append("fewer than 2 clean budgets: the power laws include flagged budgets")
  budgets = []
  for j, (g, idx) in enumerate(groups):
    n_opt, d_opt = math.exp(log_n[0, j]), math.exp(log_d[0, j])
    budgets.append({
        "C": table.budgets[g] if count == "total" else math.exp(log_c[0, j]),
        "nominal_C": table.budgets[g], "n_runs": len(idx),
        "N_min": params[idx].min(), "N_max": params[idx].max(), "N_opt": n_opt, "D_opt": d_opt,
        "tokens_per_param": d_opt / n_opt, "loss_opt": fits[j]["loss_opt"][0],
        "parabola": {"center_log_N": fits[j]["center"], "coef": fits[j]["coef"][0]},
        "opens_downward": not upward[0, j], "vertex_in_range": bool(inside[0, j]),
        "used_in_fit": bool(mask[0, j]), "flops_per_param_token": fits[j]["k"]})
  out = {"count": count, "budgets": budgets, "skipped_budgets": skipped,
         "n_budgets": len(fits), "n_upward": n_up, "n_vertex_in_range": n_in,
         "n_used": int(mask[0].sum()), "a": a_s[0], "b": b_s[0],
         "N_coefficient": math.exp(a_icpt[0]) if np.isfinite(a_icpt[0]) else None,
         "D_coefficient": math.exp(b_icpt[0]) if np.isfinite(b_icpt[0]) else None,
         "frontier": frontier, "warnings": warnings}
  if n_boot:
    valid = np.isfinite(a_s[1:])
    tpp = np.exp(log_d[1:] - log_n[1:])
    out["bootstrap"] = {
        "n": n_boot, "n_valid": int(valid.sum()), "seed": seed, "confidence": confidence,
        "a": _interval(a_s[1:], confidence), "b": _interval(b_s[1:], confidence),
        "a_std": float(np.nanstd(a_s[1:])) if valid.any() else None,
        "tokens_per_param": {_budget_key(b["C"]): _interval(tpp[:, j], confidence)
                             for j, b in enumerate(budgets)},
        "frac_vertex_in_range": float(inside[1:].mean())}
    out["samples"] = {"a": a_s[1:], "log_N_coefficient": a_icpt[1:], "b": b_s[1:],
                      "log_D_coefficient": b_icpt[1:], **frontier_samples}
  return to_jsonable(out)


# ----------------------------------------------------------------------------- approach 3


def _law_summary(theta, budgets, k) -> dict:
  with np.errstate(over="ignore"):
    law = laws.theta_to_law(theta)
  out = dict(law)
  degenerate = not all(np.isfinite(v) and v > 0 for v in (law["A"], law["B"], law["E"]))
  if law["alpha"] <= 0 or law["beta"] <= 0 or degenerate:
    out.update(a=None, b=None, G=None, optimal=[],
               warning="the fitted law has no compute-optimal frontier (non-positive "
                       "exponent or non-finite coefficient): too little or degenerate data")
    return out
  opt = laws.compute_optimal(np.asarray(budgets), law, k)
  out.update(a=opt["a"], b=opt["b"], G=opt["G"], optimal=[
      {"C": c, "N_opt": n, "D_opt": d, "tokens_per_param": d / n, "loss": l}
      for c, n, d, l in zip(budgets, opt["N_opt"], opt["D_opt"], opt["loss"])])
  return out


def approach3(runs, *, count: str = "total", grid=DEFAULT_GRID, bootstrap: int = 0,
              bootstrap_grid: int = 2, seed: int = 0, confidence: float = 0.95,
              delta: float = HUBER_DELTA) -> dict:
  """Parametric law fit (see `fit_parametric`) with alpha, beta, E, A, B, a, b, G and the
  compute-optimal N, D, tokens/param at each budget (C = k N D, k the median flops/(N D) of
  the runs) and at Gopher's 5.76e23 FLOPs (an extrapolation). Bootstrap resamples restart from
  the full-data optimum plus the `bootstrap_grid` best grid points. Needs >= 5 runs.
  """
  table = normalize_runs(runs)
  params, flops = table.columns(count)
  if len(table) < MIN_RUNS_APPROACH3:
    raise InsufficientDataError(f"Approach 3 fits 5 parameters and needs >= "
                                f"{MIN_RUNS_APPROACH3} runs; got {len(table)}")
  k = float(np.median(flops / (params * table.tokens)))
  budgets = list(table.budgets) + [laws.GOPHER_BUDGET]
  fit = fit_parametric(params, table.tokens, table.loss, grid=grid, delta=delta)
  summary = _law_summary(fit["theta"], budgets, k)
  log_pred = laws.log_loss_lse(fit["theta"], np.log(params), np.log(table.tokens))[0]
  summary["rms_log_residual"] = float(np.sqrt(np.mean((log_pred - np.log(table.loss)) ** 2)))
  out = {"count": count, "delta": delta, "flops_per_param_token": k, **summary,
         "extrapolated_budgets": [laws.GOPHER_BUDGET],
         **{key: fit[key] for key in ("objective", "grad", "grad_norm", "grad_rel",
                                      "refit_objective_change", "refit_param_change",
                                      "converged", "n_starts", "n_failed", "message")}}
  out["warnings"] = []
  if not fit["converged"]:
    out["warnings"].append("L-BFGS did not pass the convergence check (see grad_rel and "
                           "refit changes); treat the parametric fit with caution")
  if summary["a"] is None:
    out["warnings"].append("fitted alpha or beta <= 0: no finite compute optimum")
  if bootstrap:
    w = _stratified_weights(table, int(bootstrap), np.random.default_rng(seed))
    loss_bn = _resampled_losses(table, int(bootstrap), seed)
    keys = ("alpha", "beta", "E", "A", "B", "a", "b", "G")
    samples = {key: [] for key in keys}
    tpp, thetas, n_conv = [], [], 0
    for wi, li in zip(w, loss_bn):
      bf = fit_parametric(params, table.tokens, li, weights=wi, delta=delta,
                          grid=bootstrap_grid, extra_inits=fit["theta"])
      n_conv += bf["converged"]
      thetas.append(bf["theta"])
      s = _law_summary(bf["theta"], budgets, k)
      for key in keys:
        samples[key].append(np.nan if s[key] is None else s[key])
      tpp.append([o["tokens_per_param"] for o in s["optimal"]] or [np.nan] * len(budgets))
    tpp = np.array(tpp)
    out["bootstrap"] = {
        "n": int(bootstrap), "seed": seed, "confidence": confidence, "n_converged": n_conv,
        **{key: _interval(samples[key], confidence) for key in keys},
        "tokens_per_param": {_budget_key(c): _interval(tpp[:, j], confidence)
                             for j, c in enumerate(budgets)}}
    out["samples"] = {"theta": np.array(thetas)}
  out["theta"] = fit["theta"]
  return to_jsonable(out)


# ----------------------------------------------------------------------------- everything


def unmet_requirements(runs) -> list:
  """Human-readable reasons the runs cannot support Approach 1, 2 or 3 (empty when all can)."""
  table = normalize_runs(runs)
  out = []
  sizes = [len(np.unique(table.params[idx])) for idx in table.groups()]
  per_budget = {_budget_key(c): int((table.group == g).sum()) for g, c in enumerate(table.budgets)}
  if len(table.budgets) < MIN_POINTS_APPROACH1:
    out.append(f"Approach 1 needs >= {MIN_POINTS_APPROACH1} compute budgets; got "
               f"{len(table.budgets)}")
  n_ok = sum(s >= MIN_RUNS_PER_BUDGET for s in sizes)
  if n_ok < MIN_BUDGETS_APPROACH2:
    out.append(f"Approach 2 needs >= {MIN_BUDGETS_APPROACH2} compute budgets with >= "
               f"{MIN_RUNS_PER_BUDGET} runs (distinct model sizes) each; got {n_ok} "
               f"(runs per budget: {per_budget})")
  if len(table) < MIN_RUNS_APPROACH3:
    out.append(f"Approach 3 needs >= {MIN_RUNS_APPROACH3} runs; got {len(table)}")
  return out


def analyze(runs, *, bootstrap: int = 1000, bootstrap_parametric: Optional[int] = None,
            seed: int = 0, grid=DEFAULT_GRID, confidence: float = 0.95,
            strict: bool = False) -> dict:
  """All three approaches plus the Kaplan-vs-Chinchilla (non-embedding) ablation.

  bootstrap_parametric defaults to min(bootstrap, 200): each Approach 3 resample is an L-BFGS
  fit. With strict=False an approach the data cannot support is reported as
  {"skipped": reason} instead of raising.
  """
  table = normalize_runs(runs)
  n3 = min(bootstrap, 200) if bootstrap_parametric is None else bootstrap_parametric
  out = {
      "n_runs": len(table), "dropped_runs": table.dropped, "has_budget_column": table.has_budget,
      "has_non_embedding": table.has_non_embedding, "budgets": table.budgets,
      "runs_per_budget": [int((table.group == g).sum()) for g in range(len(table.budgets))],
      "flops_per_param_token": float(np.median(table.flops / (table.params * table.tokens))),
      "confidence": confidence, "seed": seed, "seed_noise": seed_noise(table),
      "seeds_per_point": [int(table.n_seeds.min()), int(table.n_seeds.max())],
      "reference": {"chinchilla": laws.CHINCHILLA, "epoch_ai": laws.EPOCH_AI,
                    "chinchilla_table2": laws.CHINCHILLA_TABLE2,
                    "chinchilla_table2_interval": laws.CHINCHILLA_TABLE2_INTERVAL,
                    "chinchilla_model": laws.CHINCHILLA_MODEL},
  }

  def attempt(fn, **kw):
    try:
      return fn(table, **kw)
    except InsufficientDataError as e:
      if strict:
        raise
      return {"skipped": str(e)}

  out["approach1"] = attempt(approach1, bootstrap=bootstrap, seed=seed, confidence=confidence)
  out["approach2"] = attempt(approach2, bootstrap=bootstrap, seed=seed, confidence=confidence)
  out["approach3"] = attempt(approach3, grid=grid, bootstrap=n3, seed=seed,
                             confidence=confidence)
  if table.has_non_embedding:
    ab = {"approach1": attempt(approach1, count="non_embedding", bootstrap=bootstrap,
                               seed=seed, confidence=confidence),
          "approach2": attempt(approach2, count="non_embedding", bootstrap=bootstrap,
                               seed=seed, confidence=confidence)}
    for name in ("approach1", "approach2"):
      ab[name].pop("samples", None)  # predictions use the total-count fits
      a_tot, a_ne = out[name].get("a"), ab[name].get("a")
      ab[name + "_shift"] = (None if a_tot is None or a_ne is None else
                             {"a_total": a_tot, "a_non_embedding": a_ne, "delta_a": a_ne - a_tot})
    out["ablation"] = ab
  return to_jsonable(out)
