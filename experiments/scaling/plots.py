"""PNG plots of a scaling analysis (matplotlib's Agg renderer via Figure; no pyplot state).

Each function takes the validated runs (`approaches.RunTable`) and the dict `analyze` returned,
writes one PNG and returns its path, or None when the analysis has nothing to draw.
"""

import math
import os
from typing import Optional

import numpy as np
from matplotlib import cm, colors
from matplotlib.figure import Figure

from experiments.scaling import laws
from experiments.scaling.runs import normalize_runs

PLOT_FILES = {"isoflop": "isoflop.png", "allocation": "optimal_allocation.png",
              "loss_vs_flops": "loss_vs_flops.png", "parametric": "parametric_contours.png",
              "ablation": "ablation_non_embedding.png"}


def _ok(section) -> bool:
  return isinstance(section, dict) and "skipped" not in section and section.get("a") is not None


def _budget_colors(budgets):
  norm = colors.LogNorm(vmin=min(budgets), vmax=max(budgets) * 1.0001)
  return lambda c: cm.viridis(norm(c) * 0.9)


def _save(fig: Figure, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


def plot_isoflop(table, analysis: dict, path: str) -> str:
  """Loss vs N per budget (log x) with the fitted parabolas and their minima."""
  table = normalize_runs(table)
  color = _budget_colors(table.budgets)
  fig = Figure(figsize=(7, 4.8))
  ax = fig.add_subplot()
  for g, idx in enumerate(table.groups()):
    ax.scatter(table.params[idx], table.loss[idx], s=18, color=color(table.budgets[g]),
               label=f"C={table.budgets[g]:.1e}")
  a2 = analysis.get("approach2", {})
  for b in a2.get("budgets", []) if isinstance(a2, dict) else []:
    c0, c1, c2 = b["parabola"]["coef"]
    xm = b["parabola"]["center_log_N"]
    x = np.linspace(math.log(b["N_min"]) - 0.3, math.log(b["N_max"]) + 0.3, 100)
    ax.plot(np.exp(x), c0 + c1 * (x - xm) + c2 * (x - xm) ** 2, lw=1,
            color=color(b["nominal_C"]))
    if b["N_opt"] is not None and b["loss_opt"] is not None:
      clean = b["vertex_in_range"] and not b["opens_downward"]
      ax.scatter([b["N_opt"]], [b["loss_opt"]], marker="*", s=130, zorder=3,
                 facecolors=color(b["nominal_C"]) if clean else "none",
                 edgecolors="black", linewidths=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("parameters N")
  ax.set_ylabel("final loss")
  ax.set_title("IsoFLOP profiles (star: parabola minimum; hollow = flagged)")
  ax.legend(fontsize=7, ncol=2)
  return _save(fig, path)


def _line_through(c, c0, y0, slope):
  return y0 * (np.asarray(c) / c0) ** slope


def plot_allocation(table, analysis: dict, path: str) -> Optional[str]:
  """N_opt and D_opt vs C: each approach's points and fitted lines, plus Chinchilla's
  published approach-2 exponents (and Kaplan's a) as reference lines through the first point."""
  table = normalize_runs(table)
  a1, a2, a3 = (analysis.get(k, {}) for k in ("approach1", "approach2", "approach3"))
  if not any(_ok(s) for s in (a1, a2, a3)):
    return None
  c_grid = np.geomspace(table.budgets.min() / 2, table.budgets.max() * 2, 50)
  ref = laws.CHINCHILLA_TABLE2
  fig = Figure(figsize=(11, 4.4))
  for col, (key, label) in enumerate((("N", "N_opt (parameters)"), ("D", "D_opt (tokens)"))):
    ax = fig.add_subplot(1, 2, col + 1)
    expo = "a" if key == "N" else "b"
    first = None
    if _ok(a1):
      pts = a1["points"]
      ax.scatter([p["C"] for p in pts], [p[key] for p in pts], marker="s", s=22, color="C0")
      ax.plot(c_grid, a1[f"{key}_coefficient"] * c_grid ** a1[expo], color="C0",
              label=f"approach 1: {expo}={a1[expo]:.3f}")
    if _ok(a2):
      used = [b for b in a2["budgets"] if b["used_in_fit"]]
      shown = [b for b in a2["budgets"] if b[f"{key}_opt"] is not None]
      ax.scatter([b["C"] for b in shown], [b[f"{key}_opt"] for b in shown], marker="o", s=26,
                 color="C1")
      if a2[f"{key}_coefficient"] is not None:
        ax.plot(c_grid, a2[f"{key}_coefficient"] * c_grid ** a2[expo], color="C1",
                label=f"approach 2: {expo}={a2[expo]:.3f}")
      if used:
        first = (used[0]["C"], used[0][f"{key}_opt"])
    if _ok(a3):
      opt = laws.compute_optimal(c_grid, a3, a3["flops_per_param_token"])
      ax.plot(c_grid, opt[f"{key}_opt"], color="C2", ls="-.",
              label=f"approach 3: {expo}={a3[expo]:.3f}")
      if first is None:
        first = (c_grid[0], opt[f"{key}_opt"][0])
    if first is None and _ok(a1):
      first = (a1["points"][0]["C"], a1["points"][0][key])
    if first is not None:
      ax.plot(c_grid, _line_through(c_grid, *first, ref["approach2"][expo]), color="gray",
              ls="--", lw=1, label=f"Chinchilla {expo}={ref['approach2'][expo]} (ref)")
      ax.plot(c_grid, _line_through(c_grid, *first, ref["kaplan"][expo]), color="gray",
              ls=":", lw=1, label=f"Kaplan {expo}={ref['kaplan'][expo]} (ref)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
  return _save(fig, path)


def plot_loss_vs_flops(table, analysis: dict, path: str) -> str:
  """Every run's loss vs FLOPs (colour: log N), the lower envelope, and approach 3's optimum."""
  table = normalize_runs(table)
  fig = Figure(figsize=(7, 4.8))
  ax = fig.add_subplot()
  sc = ax.scatter(table.flops, table.loss, c=np.log10(table.params), s=16, cmap="viridis")
  fig.colorbar(sc, ax=ax, label="log10 N")
  a1 = analysis.get("approach1", {})
  if _ok(a1):
    pts = a1["points"]
    ax.plot([p["C"] for p in pts], [p["loss"] for p in pts], color="C3", marker="o", lw=1.2,
            label="lower envelope (approach 1)")
  a3 = analysis.get("approach3", {})
  if _ok(a3):
    c = np.geomspace(table.flops.min(), table.flops.max(), 60)
    ax.plot(c, laws.compute_optimal(c, a3, a3["flops_per_param_token"])["loss"], color="black",
            ls="--", lw=1, label="approach 3 compute-optimal loss")
  ax.set_xscale("log")
  ax.set_xlabel("FLOPs")
  ax.set_ylabel("final loss")
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_parametric(table, analysis: dict, path: str) -> Optional[str]:
  """Contours of the fitted L(N, D), IsoFLOP lines, the compute-optimal frontier, the runs."""
  table = normalize_runs(table)
  a3 = analysis.get("approach3", {})
  if not isinstance(a3, dict) or "skipped" in a3:
    return None
  k = a3["flops_per_param_token"]
  n = np.geomspace(table.params.min() / 3, table.params.max() * 3, 120)
  d = np.geomspace(table.tokens.min() / 3, table.tokens.max() * 3, 120)
  nn, dd = np.meshgrid(n, d)
  fig = Figure(figsize=(7, 5.2))
  ax = fig.add_subplot()
  z = laws.loss(nn, dd, a3)
  cs = ax.contour(nn, dd, z, levels=np.quantile(z, np.linspace(0.02, 0.98, 14)), cmap="magma",
                  linewidths=0.8)
  ax.clabel(cs, fontsize=6, fmt="%.2f")
  for c in table.budgets:
    ax.plot(n, c / (k * n), color="gray", lw=0.6, ls=":")
  if a3.get("a") is not None:
    c = np.geomspace(table.budgets.min() / 4, table.budgets.max() * 4, 50)
    opt = laws.compute_optimal(c, a3, k)
    ax.plot(opt["N_opt"], opt["D_opt"], color="C0", lw=2, label="compute-optimal frontier")
  ax.scatter(table.params, table.tokens, s=10, color="black", label="runs")
  a2 = analysis.get("approach2", {})
  if isinstance(a2, dict) and "budgets" in a2:
    shown = [b for b in a2["budgets"] if b["N_opt"] is not None]
    ax.scatter([b["N_opt"] for b in shown], [b["D_opt"] for b in shown],
               marker="*", s=90, color="C1", label="IsoFLOP minima (approach 2)", zorder=3)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlim(n[0], n[-1])
  ax.set_ylim(d[0], d[-1])
  ax.set_xlabel("parameters N")
  ax.set_ylabel("tokens D")
  ax.set_title("fitted L(N, D) (dotted: IsoFLOP budgets)")
  ax.legend(fontsize=7, loc="upper right")
  return _save(fig, path)


def plot_ablation(table, analysis: dict, path: str) -> Optional[str]:
  """IsoFLOP N_opt vs C counting all parameters vs non-embedding parameters (Kaplan)."""
  ab = analysis.get("ablation")
  if not ab or not _ok(ab.get("approach2")) or not _ok(analysis.get("approach2")):
    return None
  fig = Figure(figsize=(6.5, 4.6))
  ax = fig.add_subplot()
  for sec, name, color in ((analysis["approach2"], "total params and FLOPs", "C1"),
                           (ab["approach2"], "non-embedding (Kaplan)", "C4")):
    shown = [b for b in sec["budgets"] if b["N_opt"] is not None and b["C"] is not None]
    c = np.array([b["C"] for b in shown])
    ax.scatter(c, [b["N_opt"] for b in shown], color=color, s=24)
    grid = np.geomspace(c.min() / 1.5, c.max() * 1.5, 30)
    if sec["N_coefficient"] is not None:
      ax.plot(grid, sec["N_coefficient"] * grid ** sec["a"], color=color,
              label=f"{name}: a={sec['a']:.3f}")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("compute C (FLOPs, same counting as N)")
  ax.set_ylabel("IsoFLOP N_opt")
  ax.legend(fontsize=8)
  return _save(fig, path)


def make_plots(out_dir: str, table, analysis: dict) -> dict:
  """Writes every applicable plot into out_dir; returns {name: path}."""
  os.makedirs(out_dir, exist_ok=True)
  table = normalize_runs(table)
  fns = {"isoflop": plot_isoflop, "allocation": plot_allocation,
         "loss_vs_flops": plot_loss_vs_flops, "parametric": plot_parametric,
         "ablation": plot_ablation}
  out = {}
  for name, fn in fns.items():
    path = fn(table, analysis, os.path.join(out_dir, PLOT_FILES[name]))
    if path:
      out[name] = path
  return out
