r"""Fits Chinchilla-style compute-optimal scaling laws to a CSV of finished runs.

  python -m experiments.fit_scaling --csv=runs.csv [--out=DIR] [--bootstrap=1000] [--seed=0]
  python -m experiments.fit_scaling --csv=runs.csv --predict_flops=1e14 --out=DIR

The CSV needs columns params, tokens, loss; optional: flops (default 6*params*tokens), budget
(the nominal compute budget of each run's IsoFLOP group; else runs are grouped by flops within
~5%), non_embedding_params, non_embedding_flops (enable the Kaplan-vs-Chinchilla ablation), seed
(rows of one budget with equal params and tokens are seeds of one point: their losses are
averaged, the seed noise is reported and the bootstrap redraws the seeds).
Prints the analysis as JSON and a short table; with --out also writes plots, report.md,
runs.csv and analysis.json there. --predict_flops=C adds the compute-optimal N, D and loss at
budget C with bootstrap intervals for each approach (experiments/scaling/predict.py), printed
and, with --out, written to DIR/prediction.json.
"""

import csv
import json
import os
import sys

from absl import app, flags

from experiments.scaling import approaches, predict, report

_CSV = flags.DEFINE_string("csv", None, "CSV of runs: params, tokens, loss[, flops, budget, ...].")
_OUT = flags.DEFINE_string("out", None, "Directory for plots, report.md, runs.csv, analysis.json.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples (0 disables).")
_BOOTSTRAP_PARAMETRIC = flags.DEFINE_integer(
    "bootstrap_parametric", None,
    "Approach 3 resamples (each an L-BFGS fit); default min(--bootstrap, 200).")
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
_GRID = flags.DEFINE_string(
    "grid", str(approaches.DEFAULT_GRID),
    "Approach 3 L-BFGS starts: 'full' (all 4500 of Chinchilla's grid) or the number of best "
    "grid points to start from.")
_ALLOW_PARTIAL = flags.DEFINE_bool(
    "allow_partial", False, "Fit whichever approaches the runs support instead of failing.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Mark the report as a smoke test (warning banner).")
_TITLE = flags.DEFINE_string("title", "Compute-optimal scaling analysis", "Report title.")
_PREDICT_FLOPS = flags.DEFINE_float(
    "predict_flops", None, "Predict N_opt, D_opt and loss (with intervals) at this budget; "
    "written to --out/prediction.json.")


def read_runs_csv(path: str) -> list:
  """Rows of the CSV as dicts of strings (header names stripped)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--csv file not found: {path}")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames:
      raise ValueError(f"{path} is empty; it needs a header row with params, tokens, loss")
    rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
  if not rows:
    raise ValueError(f"{path} has a header but no runs")
  seen, duplicates = {}, []
  for line, row in enumerate(rows, start=2):
    key = tuple(sorted((k, (v or "").strip()) for k, v in row.items()))
    if key in seen:
      duplicates.append(f"line {line} repeats line {seen[key]}")
    seen.setdefault(key, line)
  if duplicates:
    raise ValueError(f"{path} has {len(duplicates)} duplicated run(s) ({'; '.join(duplicates[:5])}"
                     f"{'; ...' if len(duplicates) > 5 else ''}): a repeated run would count "
                     "twice and narrow the bootstrap intervals falsely; remove the repeats")
  return rows


def _parse_grid(grid: str):
  if grid == "full":
    return "full"
  try:
    k = int(grid)
  except ValueError:
    raise ValueError(f"--grid must be 'full' or a positive integer, got {grid!r}") from None
  if k <= 0:
    raise ValueError(f"--grid must be 'full' or a positive integer, got {grid!r}")
  return k


def fit_csv(csv_path: str, out_dir=None, *, bootstrap: int = 1000,
            bootstrap_parametric=None, seed: int = 0, grid=approaches.DEFAULT_GRID,
            allow_partial: bool = False, is_smoke: bool = False,
            title: str = "Compute-optimal scaling analysis"):
  """Reads, checks and fits the runs; writes the report when out_dir is set.

  Returns (analysis, paths). Raises FileNotFoundError / ValueError with a message naming the
  problem (missing columns, too few runs for a fit).
  """
  rows = read_runs_csv(csv_path)
  table = approaches.normalize_runs(rows)
  unmet = approaches.unmet_requirements(table)
  if unmet and (not allow_partial or len(unmet) == 3):
    raise approaches.InsufficientDataError(
        "too few runs for a fit: " + "; ".join(unmet) +
        ("" if allow_partial else ". Pass --allow_partial to fit what the runs support."))
  analysis = approaches.analyze(table, bootstrap=bootstrap,
                                bootstrap_parametric=bootstrap_parametric, seed=seed,
                                grid=_parse_grid(str(grid)))
  paths = {}
  if out_dir:
    meta = {"title": title, "source_csv": os.path.abspath(csv_path), "bootstrap": bootstrap,
            "seed": seed, "grid": str(grid)}
    paths = report.write_report(out_dir, table, analysis, meta, is_smoke=is_smoke)
  return analysis, paths


def write_prediction(analysis: dict, compute: float, out_dir=None) -> tuple:
  """(prediction, path): `predict.predict` at `compute`, written to out_dir/prediction.json."""
  pred = predict.predict(analysis, compute)
  path = None
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "prediction.json")
    with open(path, "w") as f:
      json.dump(approaches.to_jsonable(pred), f, indent=1)
  return pred, path


def _compact(analysis: dict) -> dict:
  """The analysis without the bootstrap resamples (they stay in analysis.json)."""
  return {k: ({kk: vv for kk, vv in v.items() if kk != "samples"} if isinstance(v, dict) else v)
          for k, v in analysis.items()}


def format_table(analysis: dict) -> str:
  """A few-line text summary: a, its interval, b and tokens/param at the largest budget."""
  lines = [f"{'approach':<22}{'a':>7}  {'a interval':<18}{'b':>7}  {'D/N @ max C':>11}"]
  for name in ("approach1", "approach2", "approach3"):
    s = analysis.get(name, {})
    if "skipped" in s:
      lines.append(f"{name:<22}skipped: {s['skipped']}")
      continue
    iv = s.get("bootstrap", {}).get("a")
    ivs = f"[{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "-"
    if name == "approach1":
      tpp = s["points"][-1]["tokens_per_param"]
    elif name == "approach2":
      tpp = s["budgets"][-1]["tokens_per_param"]
    else:
      data = [o for o in s.get("optimal", []) if o["C"] not in s["extrapolated_budgets"]]
      tpp = data[-1]["tokens_per_param"] if data else None
    a, b = s.get("a"), s.get("b")
    text = lambda x, spec: "n/a" if x is None else format(x, spec)
    lines.append(f"{name:<22}{text(a, '.3f'):>7}  {ivs:<18}{text(b, '.3f'):>7}  "
                 f"{text(tpp, '.1f'):>11}")
  if "approach3" in analysis and "converged" in analysis["approach3"]:
    lines.append(f"approach3 converged: {analysis['approach3']['converged']} "
                 f"(relative gradient {analysis['approach3']['grad_rel']:.1e})")
  for name, shift in (analysis.get("ablation") or {}).items():
    if name.endswith("_shift") and shift:
      lines.append(f"non-embedding ablation {name[:-6]}: a {shift['a_total']:.3f} -> "
                   f"{shift['a_non_embedding']:.3f} ({shift['delta_a']:+.3f})")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    if _PREDICT_FLOPS.value is not None and not _PREDICT_FLOPS.value > 0:
      raise ValueError(f"--predict_flops must be a positive FLOP count, got {_PREDICT_FLOPS.value}")
    analysis, paths = fit_csv(
        _CSV.value, _OUT.value, bootstrap=_BOOTSTRAP.value,
        bootstrap_parametric=_BOOTSTRAP_PARAMETRIC.value, seed=_SEED.value, grid=_GRID.value,
        allow_partial=_ALLOW_PARTIAL.value, is_smoke=_SMOKE.value, title=_TITLE.value)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"fit_scaling: error: {e}")
  print(json.dumps(_compact(analysis), indent=1))
  print(format_table(analysis))
  if _PREDICT_FLOPS.value is not None:
    pred, path = write_prediction(analysis, _PREDICT_FLOPS.value, _OUT.value)
    print(predict.format_prediction(pred))
    if path:
      print(f"prediction: {path}")
  if paths:
    print(f"report: {paths['report']}")


if __name__ == "__main__":
  flags.mark_flag_as_required("csv")
  app.run(main)
