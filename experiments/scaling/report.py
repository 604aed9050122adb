"""Markdown report, runs CSV and analysis JSON for a scaling analysis.

The prose is generated from the numbers: every sentence about agreement with Chinchilla is a
comparison the analysis actually made, so a small or broken sweep reads as one.
"""

import csv
import json
import math
import os
from typing import Optional

import numpy as np

from experiments.scaling import laws
from experiments.scaling.runs import normalize_runs, to_jsonable
from experiments.scaling.plots import make_plots

CHINCHILLA_ISOFLOP_RANGE = (6e18, 3e21)  # Hoffmann et al. 2022 sec. 3.2: 9 budgets in this range
SMOKE_BANNER = ("> **WARNING: smoke test.** These runs are far too small and short for the "
                "numbers below to say anything about scaling; they only show that the sweep, "
                "the fits, the plots and this report run end to end.")


def _fmt(x, spec=".3g") -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "n/a"
  return format(x, spec)


def _ci(iv, spec=".3f") -> str:
  return f"[{_fmt(iv[0], spec)}, {_fmt(iv[1], spec)}]" if iv else ""


def _ok(section) -> bool:
  return isinstance(section, dict) and "skipped" not in section and section.get("a") is not None


def _section(analysis, name):
  s = analysis.get(name)
  return s if isinstance(s, dict) else {}


def _exponent_rows(analysis) -> list:
  rows = []
  for i, name in enumerate(("approach1", "approach2", "approach3"), start=1):
    s, ref = _section(analysis, name), laws.CHINCHILLA_TABLE2[name]
    bs = s.get("bootstrap", {})
    if "skipped" in s:
      rows.append(f"| {i} | skipped: {s['skipped']} | | {ref['a']} {_ci(ref['a_interval'])} "
                  f"| {ref['b']} {_ci(ref['b_interval'])} |")
      continue
    rows.append(f"| {i} | {_fmt(s.get('a'), '.3f')} {_ci(bs.get('a'))} | "
                f"{_fmt(s.get('b'), '.3f')} {_ci(bs.get('b'))} | {ref['a']} "
                f"{_ci(ref['a_interval'])} | {ref['b']} {_ci(ref['b_interval'])} |")
  return rows


def agreement_sentences(table, analysis: dict) -> list:
  """Plain statements of where this sweep can and cannot agree with Chinchilla."""
  out = []
  budgets = np.asarray(table.budgets)
  decades = math.log10(budgets.max() / budgets.min()) if len(budgets) > 1 else 0.0
  out.append(f"The sweep has {len(table)} runs in {len(budgets)} compute budgets from "
             f"{budgets.min():.2g} to {budgets.max():.2g} FLOPs ({decades:.1f} decades); "
             f"Chinchilla's IsoFLOP budgets spanned {CHINCHILLA_ISOFLOP_RANGE[0]:.0e} to "
             f"{CHINCHILLA_ISOFLOP_RANGE[1]:.0e} FLOPs and its headline ~20 tokens/parameter is "
             f"for {laws.GOPHER_BUDGET:.2e} FLOPs.")
  if budgets.max() < CHINCHILLA_ISOFLOP_RANGE[0]:
    out.append("Every budget here is below Chinchilla's smallest IsoFLOP budget, so agreement "
               "or disagreement is about small models only; curvature of the frontier, "
               "embedding-dominated parameter counts and short schedules all matter more here.")
  if decades < 2:
    out.append(f"With only {decades:.1f} decades of compute the exponents are weakly "
               "constrained; 3 or more decades are needed to separate a = 0.5 from a = 0.73.")
  a2 = _section(analysis, "approach2")
  if "budgets" in a2:
    out.append(f"IsoFLOP minima inside the sampled model-size range: "
               f"{a2['n_vertex_in_range']}/{a2['n_budgets']} budgets; parabolas opening "
               f"upward: {a2['n_upward']}/{a2['n_budgets']}; budgets used in the power law: "
               f"{a2['n_used']}/{a2['n_budgets']}.")
  elif "skipped" in a2:
    out.append(f"Approach 2 could not run: {a2['skipped']}")
  for i, name in enumerate(("approach1", "approach2", "approach3"), start=1):
    s = _section(analysis, name)
    if not _ok(s):
      continue
    ref = laws.CHINCHILLA_TABLE2[name]["a"]
    iv = s.get("bootstrap", {}).get("a")
    if iv:
      chin = iv[0] <= ref <= iv[1]
      kaplan = iv[0] <= laws.CHINCHILLA_TABLE2["kaplan"]["a"] <= iv[1]
      verdict = {
          (True, True): f"contains both Chinchilla's {ref} and Kaplan's 0.73: too wide to tell "
                        "them apart",
          (True, False): f"contains Chinchilla's {ref} and excludes Kaplan's 0.73",
          (False, True): f"excludes Chinchilla's {ref} but contains Kaplan's 0.73",
          (False, False): f"excludes both Chinchilla's {ref} and Kaplan's 0.73",
      }[(chin, kaplan)]
      out.append(f"Approach {i}: a = {s['a']:.3f}, bootstrap interval {_ci(iv)} {verdict}.")
      if not iv[0] <= s["a"] <= iv[1]:
        out.append(f"Approach {i}'s point estimate lies outside its own bootstrap interval: "
                   "the fit is unstable under resampling; do not trust it.")
    else:
      out.append(f"Approach {i}: a = {s['a']:.3f} (no bootstrap interval; Chinchilla: {ref}).")
  a_vals = [_section(analysis, n)["a"] for n in ("approach1", "approach2", "approach3")
            if _ok(_section(analysis, n))]
  if len(a_vals) > 1:
    out.append(f"The approaches agree on a to within {max(a_vals) - min(a_vals):.3f} "
               "(Chinchilla's own three approaches spread 0.46-0.50).")
  used = [b for b in a2.get("budgets", []) if b["used_in_fit"]]
  if used:
    top = used[-1]
    iv = a2.get("bootstrap", {}).get("tokens_per_param", {}).get(format(top["C"], ".4g"))
    out.append(f"At the largest budget used in the fit ({top['C']:.2g} FLOPs) the IsoFLOP "
               f"optimum is {top['tokens_per_param']:.1f} tokens/parameter {_ci(iv, '.1f')}; "
               "Chinchilla's "
               "~20 is for 5.76e23 FLOPs and, unless a = b = 0.5 exactly, the ratio drifts as "
               "C^(b-a), so a different small-scale ratio is not by itself a disagreement.")
  a3 = _section(analysis, "approach3")
  if _ok(a3):
    gopher = next((o for o in a3["optimal"] if o["C"] == laws.GOPHER_BUDGET), None)
    conv = ("passed" if a3["converged"] else "FAILED") + (
        f" the convergence check (relative gradient {a3['grad_rel']:.1e}, refit moved the "
        f"objective by {a3['refit_objective_change']:.1e})")
    out.append(f"Approach 3 {conv}; the fitted law misses the runs' losses by "
               f"{100 * a3['rms_log_residual']:.2f}% (RMS). Its E, A and B depend on corpus and "
               "tokenizer and are not comparable with Chinchilla's; only alpha, beta and the "
               "exponents are.")
    if gopher:
      ext = math.log10(laws.GOPHER_BUDGET / budgets.max())
      out.append(f"Extrapolated {ext:.1f} decades to Gopher's budget, the fitted law gives "
                 f"{gopher['tokens_per_param']:.1f} tokens/parameter (Chinchilla: 20); an "
                 "extrapolation that far is illustrative, not a prediction.")
  ab = analysis.get("ablation") or {}
  for name in ("approach2", "approach1"):
    shift = ab.get(name + "_shift")
    if shift:
      frac = 1.0 - table.non_embedding_params / table.params
      moved = (f"moves {name}'s a from {shift['a_total']:.3f} to "
               f"{shift['a_non_embedding']:.3f} ({shift['delta_a']:+.3f}, "
               f"{'toward' if shift['delta_a'] > 0 else 'away from'} Kaplan's 0.73)")
      if abs(shift["delta_a"]) < 0.01:
        moved = f"leaves {name}'s a almost unchanged ({shift['delta_a']:+.3f})"
      out.append(f"Counting non-embedding parameters and FLOPs (Kaplan) {moved}; embeddings are "
                 f"{100 * frac.min():.0f}-{100 * frac.max():.0f}% of parameters here. Pearce & "
                 "Song (2024) and Porian et al. (2024) trace much of the Kaplan-Chinchilla gap "
                 "to this accounting in small models.")
      break
  noise = analysis.get("seed_noise")
  if noise:
    out.append(f"Seed noise: {noise['seeds_per_point'][0]}-{noise['seeds_per_point'][1]} seeds "
               f"per point; the held-out loss moves {noise['std']:.4f} nats "
               f"({100 * noise['relative_std']:.2f}%) from seed to seed (pooled std). Losses "
               "are seed-averaged and the bootstrap redraws the seeds.")
  if analysis.get("dropped_runs"):
    out.append(f"{len(analysis['dropped_runs'])} run(s) had a non-finite loss and were left out.")
  return out


def _approach2_table(a2) -> list:
  lines = ["| C (FLOPs) | runs | N range | N_opt | D_opt | D/N | flags |",
           "|---|---|---|---|---|---|---|"]
  for b in a2.get("budgets", []):
    flags = []
    if b["opens_downward"]:
      flags.append("opens downward")
    elif not b["vertex_in_range"]:
      flags.append("minimum outside sampled N")
    if not b["used_in_fit"]:
      flags.append("not used")
    lines.append(f"| {b['C']:.3g} | {b['n_runs']} | {b['N_min']:.3g}-{b['N_max']:.3g} | "
                 f"{_fmt(b['N_opt'])} | {_fmt(b['D_opt'])} | {_fmt(b['tokens_per_param'], '.1f')}"
                 f" | {', '.join(flags) or 'ok'} |")
  return lines


def _approach3_lines(a3) -> list:
  bs = a3.get("bootstrap", {})
  lines = ["| | ours | Chinchilla (paper) | Epoch AI refit |", "|---|---|---|---|"]
  for key in ("alpha", "beta", "E", "A", "B"):
    lines.append(f"| {key} | {_fmt(a3.get(key), '.4g')} {_ci(bs.get(key), '.4g')} | "
                 f"{laws.CHINCHILLA[key]} | {laws.EPOCH_AI[key]} |")
  for key, ref in (("a", laws.exponents(laws.CHINCHILLA["alpha"], laws.CHINCHILLA["beta"])[0]),
                   ("b", laws.exponents(laws.CHINCHILLA["alpha"], laws.CHINCHILLA["beta"])[1])):
    epoch = laws.exponents(laws.EPOCH_AI["alpha"], laws.EPOCH_AI["beta"])["ab".index(key)]
    lines.append(f"| {key} | {_fmt(a3.get(key), '.3f')} {_ci(bs.get(key))} | {ref:.3f} | "
                 f"{epoch:.3f} |")
  lines += ["", f"Converged: **{a3['converged']}** (gradient norm {a3['grad_norm']:.2e}, "
            f"relative {a3['grad_rel']:.2e}; refit from the best point changed the objective by "
            f"{a3['refit_objective_change']:.1e} relative and the parameters by "
            f"{a3['refit_param_change']:.1e}; {a3['n_starts']} L-BFGS starts).", "",
            "| C (FLOPs) | N_opt | D_opt | D/N | D/N interval |", "|---|---|---|---|---|"]
  tpp = bs.get("tokens_per_param", {})
  for o in a3.get("optimal", []):
    note = " (extrapolated)" if o["C"] in a3.get("extrapolated_budgets", []) else ""
    iv = tpp.get(format(o["C"], ".4g"))
    lines.append(f"| {o['C']:.3g}{note} | {o['N_opt']:.3g} | {o['D_opt']:.3g} | "
                 f"{o['tokens_per_param']:.1f} | {_ci(iv, '.1f')} |")
  return lines


def _tokens_table(analysis) -> list:
  lines = ["| source | C (FLOPs) | tokens per parameter |", "|---|---|---|"]
  a2, a3 = _section(analysis, "approach2"), _section(analysis, "approach3")
  used = [b for b in a2.get("budgets", []) if b["used_in_fit"]]
  if used:
    top = used[-1]
    iv = a2.get("bootstrap", {}).get("tokens_per_param", {}).get(format(top["C"], ".4g"))
    lines.append(f"| ours, approach 2 (largest budget used) | {top['C']:.3g} | "
                 f"{top['tokens_per_param']:.1f} {_ci(iv, '.1f')} |")
  tpp = a3.get("bootstrap", {}).get("tokens_per_param", {})
  for o in a3.get("optimal", [])[-2:]:
    note = " (extrapolated)" if o["C"] in a3.get("extrapolated_budgets", []) else ""
    lines.append(f"| ours, approach 3{note} | {o['C']:.3g} | {o['tokens_per_param']:.1f} "
                 f"{_ci(tpp.get(format(o['C'], '.4g')), '.1f')} |")
  lines.append(f"| Chinchilla 70B on 1.4T tokens (trained) | {laws.GOPHER_BUDGET:.3g} | "
               f"{laws.CHINCHILLA_MODEL['tokens_per_param']:.0f} |")
  for name, law in (("Chinchilla's printed law (E=1.69, A=406.4, ...)", laws.CHINCHILLA),
                    ("Epoch AI refit of that law", laws.EPOCH_AI)):
    ref = laws.compute_optimal(laws.GOPHER_BUDGET, law)
    lines.append(f"| {name} | {laws.GOPHER_BUDGET:.3g} | {ref['tokens_per_param']:.1f} |")
  return lines


def render_markdown(table, analysis: dict, meta: dict, plots: dict, is_smoke: bool) -> str:
  table = normalize_runs(table)
  conf = analysis.get("confidence", 0.95)
  lines = [f"# {meta.get('title', 'Compute-optimal scaling analysis')}", ""]
  if is_smoke:
    lines += [SMOKE_BANNER, ""]
  info = {k: v for k, v in meta.items() if k not in ("title", "is_smoke")}
  if info:
    lines += [f"- **{k}**: {v}" for k, v in info.items()] + [""]
  lines += ["## Exponents", "",
            f"N_opt ~ C^a, D_opt ~ C^b. Ours: point estimate and {100 * conf:.0f}% bootstrap "
            f"interval; Chinchilla (Hoffmann et al. 2022, Table 2): "
            f"{laws.CHINCHILLA_TABLE2_INTERVAL}.", "",
            "| approach | a (ours) | b (ours) | a (Chinchilla) | b (Chinchilla) |",
            "|---|---|---|---|---|", *_exponent_rows(analysis),
            f"| Kaplan et al. 2020 | | | {laws.CHINCHILLA_TABLE2['kaplan']['a']} | "
            f"{laws.CHINCHILLA_TABLE2['kaplan']['b']} |", "",
            "## Tokens per parameter", "", *_tokens_table(analysis), "",
            "The printed Chinchilla constants are rounded; with them the law's own optimum at "
            "Gopher's budget is far from the 20 tokens/parameter Chinchilla was trained with "
            "(Besiroglu et al. 2024), so compare ratios with the trained model and the refit.", "",
            "## Where this sweep can and cannot agree with Chinchilla", ""]
  lines += [f"- {s}" for s in agreement_sentences(table, analysis)] + [""]
  a2 = _section(analysis, "approach2")
  lines += ["## Approach 2: IsoFLOP profiles", ""]
  if "budgets" in a2:
    lines += ["A parabola of loss vs ln N per budget; its vertex is N_opt and D_opt = C/(k N_opt)"
              " with k the budget's FLOPs per parameter per token (6 for 6ND).", ""]
    lines += _approach2_table(a2) + [""] + [f"- warning: {w}" for w in a2.get("warnings", [])]
  else:
    lines += [f"Skipped: {a2.get('skipped', 'n/a')}"]
  lines += [""]
  if "isoflop" in plots:
    lines += ["![IsoFLOP profiles](isoflop.png)", ""]
  a1 = _section(analysis, "approach1")
  lines += ["## Approach 1: lower envelope", ""]
  if _ok(a1):
    lines += [f"Lowest-loss run of each budget ({a1['method']}); N_opt ~ C^{a1['a']:.3f}, "
              f"D_opt ~ C^{a1['b']:.3f}. Limited to the model sizes that were trained, so each "
              "point is quantised to the size grid.", ""]
  else:
    lines += [f"Skipped: {a1.get('skipped', 'n/a')}", ""]
  for name in ("loss_vs_flops", "allocation"):
    if name in plots:
      lines += [f"![{name}]({os.path.basename(plots[name])})", ""]
  a3 = _section(analysis, "approach3")
  lines += ["## Approach 3: parametric law L(N, D) = E + A/N^alpha + B/D^beta", ""]
  if "skipped" in a3 or not a3:
    lines += [f"Skipped: {a3.get('skipped', 'n/a')}", ""]
  else:
    lines += ["Huber loss (delta = 1e-3) of log-residuals of LSE(a - alpha ln N, b - beta ln D, "
              "e), summed over runs, L-BFGS from a grid of starts (Hoffmann et al. 2022 App. D; "
              "Besiroglu et al. 2024).", ""] + _approach3_lines(a3) + [""]
    lines += [f"- warning: {w}" for w in a3.get("warnings", [])]
    if "parametric" in plots:
      lines += ["", "![parametric law](parametric_contours.png)", ""]
  ab = analysis.get("ablation")
  if ab:
    lines += ["## Kaplan-vs-Chinchilla ablation: non-embedding accounting", "",
              "| approach | a (total) | a (non-embedding) | change |", "|---|---|---|---|"]
    for name in ("approach1", "approach2"):
      s = ab.get(name + "_shift")
      if s:
        lines.append(f"| {name} | {s['a_total']:.3f} | {s['a_non_embedding']:.3f} | "
                     f"{s['delta_a']:+.3f} |")
    if "ablation" in plots:
      lines += ["", "![ablation](ablation_non_embedding.png)"]
    lines += [""]
  lines += ["## Files", "", "- `runs.csv`: the runs analysed, with their budget group",
            "- `analysis.json`: every number above, and the metadata", ""]
  return "\n".join(lines)


def write_runs_csv(path: str, table) -> str:
  rows = normalize_runs(table).records()
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: repr(v) for k, v in r.items()} for r in rows)
  return path


def write_report(out_dir: str, runs, analysis: dict, meta: Optional[dict] = None, *,
                 is_smoke: Optional[bool] = None) -> dict:
  """Writes report.md, the PNG plots, runs.csv and analysis.json into out_dir.

  is_smoke (or meta["is_smoke"]) adds a warning banner. Returns {name: path}.
  """
  meta = dict(meta or {})
  smoke = bool(meta.get("is_smoke", False) if is_smoke is None else is_smoke)
  meta["is_smoke"] = smoke
  table = normalize_runs(runs)
  os.makedirs(out_dir, exist_ok=True)
  paths = dict(make_plots(out_dir, table, analysis))
  paths["runs_csv"] = write_runs_csv(os.path.join(out_dir, "runs.csv"), table)
  paths["analysis_json"] = os.path.join(out_dir, "analysis.json")
  with open(paths["analysis_json"], "w") as f:
    json.dump(to_jsonable({"meta": meta, **analysis}), f, indent=1, default=str)
  paths["report"] = os.path.join(out_dir, "report.md")
  with open(paths["report"], "w") as f:
    f.write(render_markdown(table, analysis, meta, paths, smoke))
  return paths
