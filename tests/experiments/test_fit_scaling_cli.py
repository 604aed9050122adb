"""The fit_scaling CLI end to end on generated CSVs, its errors, and the report writer."""

import csv
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from experiments import fit_scaling
from experiments.scaling import approaches, laws, report
from tests.experiments.test_scaling_fit import make_embedding_runs, make_runs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = {"bootstrap": 30, "bootstrap_parametric": 3, "grid": "8"}


def write_csv(path, runs, columns=None):
  columns = columns or list(runs[0])
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(runs)
  return str(path)


def test_cli_end_to_end(tmp_path):
  csv_path = write_csv(tmp_path / "runs.csv", make_runs(seed=1), ["params", "tokens", "loss"])
  out_dir = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.fit_scaling", f"--csv={csv_path}", f"--out={out_dir}",
       "--bootstrap=30", "--bootstrap_parametric=3", "--grid=8", "--seed=1"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode == 0, proc.stderr
  analysis, end = json.JSONDecoder().raw_decode(proc.stdout)
  assert "approach2" in proc.stdout[end:] and "report:" in proc.stdout[end:]
  a_true = laws.exponents(laws.CHINCHILLA["alpha"], laws.CHINCHILLA["beta"])[0]
  assert analysis["approach2"]["a"] == pytest.approx(a_true, abs=0.05)
  assert analysis["approach2"]["bootstrap"]["n"] == 30
  assert len(analysis["budgets"]) == 5  # grouped by flops: the CSV has no budget column
  for name in ("report.md", "runs.csv", "analysis.json", "isoflop.png"):
    assert (out_dir / name).is_file(), name


def test_main_exits_with_message_on_missing_columns(tmp_path):
  csv_path = write_csv(tmp_path / "bad.csv", make_runs(), ["params", "budget"])
  flags.FLAGS(["fit_scaling", f"--csv={csv_path}"])
  try:
    with pytest.raises(SystemExit) as exit_info:
      fit_scaling.main(["fit_scaling"])
  finally:
    flags.FLAGS.unparse_flags()
  assert "missing required column(s): tokens, loss" in str(exit_info.value.code)


def test_fit_csv_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    fit_scaling.fit_csv(str(tmp_path / "nope.csv"))
  (tmp_path / "empty.csv").write_text("")
  with pytest.raises(ValueError, match="empty"):
    fit_scaling.fit_csv(str(tmp_path / "empty.csv"))
  two = write_csv(tmp_path / "two.csv", make_runs(budgets=(1e15, 1e16), n_sizes=2))
  with pytest.raises(approaches.InsufficientDataError) as err:
    fit_scaling.fit_csv(two, **FAST)
  assert "Approach 2 needs >= 3 compute budgets" in str(err.value)
  assert "Approach 3 needs >= 5 runs" in str(err.value)
  few = write_csv(tmp_path / "few.csv", make_runs(budgets=(1e15, 1e16), n_sizes=4))
  with pytest.raises(approaches.InsufficientDataError, match="--allow_partial"):
    fit_scaling.fit_csv(few, **FAST)
  analysis, _ = fit_scaling.fit_csv(few, allow_partial=True, **FAST)
  assert "skipped" in analysis["approach2"] and analysis["approach3"]["a"] is not None
  assert "skipped" in fit_scaling.format_table(analysis)
  with pytest.raises(ValueError, match="--grid"):
    fit_scaling.fit_csv(few, allow_partial=True, bootstrap=0, grid="many")


@pytest.fixture(scope="module")
def embedding_sweep():
  runs = make_embedding_runs(noise=0.003)
  return runs, approaches.analyze(runs, bootstrap=30, bootstrap_parametric=3, grid=8)


def test_write_report_produces_every_file(tmp_path, embedding_sweep):
  runs, analysis = embedding_sweep
  paths = report.write_report(str(tmp_path), runs, analysis, {"title": "synthetic"},
                              is_smoke=True)
  expected = {"isoflop", "allocation", "loss_vs_flops", "parametric", "ablation", "runs_csv",
              "analysis_json", "report"}
  assert set(paths) == expected
  for name in expected:
    assert os.path.getsize(paths[name]) > 0, name
    if paths[name].endswith(".png"):
      with open(paths[name], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  md = open(paths["report"]).read()
  assert md.startswith("# synthetic") and "WARNING: smoke test" in md
  for png in ("isoflop.png", "optimal_allocation.png", "parametric_contours.png"):
    assert f"]({png})" in md
  assert "IsoFLOP minima inside the sampled model-size range: 5/5 budgets" in md
  assert "non-embedding" in md and "toward Kaplan" in md
  with open(paths["runs_csv"]) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(runs) and float(rows[0]["params"]) == runs[0]["params"]
  saved = json.load(open(paths["analysis_json"]))
  assert saved["meta"]["is_smoke"] is True
  assert saved["approach2"]["a"] == pytest.approx(analysis["approach2"]["a"])


def test_report_without_smoke_flag_or_approach2():
  runs = make_runs(budgets=(1e15, 1e16), n_sizes=4)
  analysis = approaches.analyze(runs, bootstrap=0, grid=4)
  md = report.render_markdown(runs, analysis, {"title": "partial"}, plots={}, is_smoke=False)
  assert "WARNING" not in md and "Approach 2 could not run" in md
  assert "Skipped: Approach 2 needs >= 3 compute budgets" in md
  assert "## Approach 3" in md and "Converged" in md


def test_duplicated_rows_are_an_error(tmp_path):
  runs = make_runs()
  path = write_csv(tmp_path / "dup.csv", runs + runs[:2])
  with pytest.raises(ValueError, match="2 duplicated run"):
    fit_scaling.fit_csv(path, **FAST)
