"""chinchilla --predict: the extrapolation runs are planned, trained, scored, reported and
skipped on a rerun; seeds flow from the plan into the analysis. Fake trainer first (fast),
then the smoke preset through the CLI with real training (slow)."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

from experiments import chinchilla
from experiments.scaling import extrapolate, shapes, sweep
from tests.experiments.test_sweep import REPO, FakeTrain

SMOKE = chinchilla.chinchilla_preset("smoke")


class NoisyFake(FakeTrain):
  """FakeTrain with a seed-dependent loss offset of +-0.3%."""

  def __call__(self, config, workdir):
    out = super().__call__(config, workdir)
    if "val_loss" in out:
      out["val_loss"] *= 1 + 0.003 * (1 if config.train.seed % 2 else -1)
    return out


def test_seeds_are_planned_trained_and_averaged(tmp_path):
  spec = dataclasses.replace(SMOKE, seeds=2)
  runs = shapes.plan_sweep(spec)
  iso = [r for r in runs if r.kind == "isoflop"]
  assert len(iso) == 2 * len(shapes.plan_sweep(SMOKE)) - 2 * len(SMOKE.lr_check)
  assert {r.seed for r in iso} == {0, 1} and all(r.run_id.endswith("_s1") for r in iso
                                                  if r.seed == 1)
  out = chinchilla.run_experiment(spec, str(tmp_path), bootstrap=10, train_fn=NoisyFake())
  analysis = json.load(open(out["paths"]["analysis_json"]))
  noise = analysis["seed_noise"]
  assert analysis["seeds_per_point"] == [2, 2]
  # the two seeds differ by +-0.3% of the loss: pooled std = 0.003 * sqrt(2) relative
  assert noise["relative_std"] == pytest.approx(0.003 * 2 ** 0.5, rel=1e-6)
  assert "## Seed noise" in open(out["paths"]["report"]).read()


def test_predict_runs_are_trained_scored_and_skipped_on_rerun(tmp_path):
  workdir = str(tmp_path)
  fake = FakeTrain()
  kw = dict(bootstrap=10, predict=(2.0, 4.0))
  out = chinchilla.run_experiment(SMOKE, workdir, train_fn=fake, **kw)
  rows = out["predictions"]["rows"]
  kinds = [r["kind"] for r in rows]
  assert kinds.count("predict") == 2 and kinds.count("missized") == 1
  trained = out["predictions"]["status"]["trained"]
  assert trained == [r["run_id"] for r in rows] and set(trained) <= set(fake.calls)
  top = max(SMOKE.budgets)
  for r in rows:
    assert r["budget"] == pytest.approx(r["multiplier"] * top)
    result = sweep.load_result(workdir, next(x for x in out["predictions"]["runs"]
                                             if x.run_id == r["run_id"]))
    assert abs(result["flops"] / r["budget"] - 1) <= SMOKE.tolerance
    assert r["achieved_loss"] == result["loss"]
    assert r["abs_error"] == pytest.approx(r["achieved_loss"] - r["predicted_loss"]["value"])
    assert r["rel_error"] == pytest.approx(r["abs_error"] / r["achieved_loss"])
    assert isinstance(r["inside"], bool)
  mis = next(r for r in rows if r["kind"] == "missized")
  ref = next(r for r in rows if r["run_id"] == mis["reference"])
  assert mis["budget"] == ref["budget"] and mis["n_factor"] in (4.0, 0.25)
  assert mis["achieved_penalty"] == pytest.approx(mis["achieved_loss"] - ref["achieved_loss"])
  assert "predicted_penalty" in mis
  report = open(os.path.join(workdir, "report.md")).read()
  assert "## Predictions tested by held-out runs" in report and "Mis-sized run" in report
  saved = json.load(open(os.path.join(workdir, "predictions.json")))
  assert [r["run_id"] for r in saved["rows"]] == trained
  again = FakeTrain()
  out = chinchilla.run_experiment(SMOKE, workdir, train_fn=again, **kw)
  assert again.calls == [] and out["predictions"]["status"]["skipped"] == trained
  assert [r["achieved_loss"] for r in out["predictions"]["rows"]] == [r["achieved_loss"]
                                                                       for r in rows]


def test_predict_sizes_runs_from_the_fit():
  analysis = {"budgets": [1e10], "confidence": 0.95,
              "approach1": {"skipped": "x"}, "approach3": {"skipped": "x"},
              "approach2": {"a": 0.5, "b": 0.5, "N_coefficient": 0.1, "D_coefficient": 1.6,
                            "frontier": {"E": 1.0, "A": 1.0, "gamma": 0.1, "log_c_ref": 23.0}}}
  runs, plan = extrapolate.plan_predictions(SMOKE, analysis, [4.0])
  assert plan[0]["sized_by"] == "approach2" and runs[0].kind == "predict"
  want = 0.1 * (4 * max(SMOKE.budgets)) ** 0.5
  got = runs[0].params
  others = [shapes.shape_stats(SMOKE, s)["params"] for s in extrapolate.candidate_shapes(SMOKE)]
  assert min(abs(n / want - 1) for n in others) == pytest.approx(abs(got / want - 1))
  with pytest.raises(ValueError, match="positive"):
    extrapolate.plan_predictions(SMOKE, analysis, [-1.0])


@pytest.mark.slow
def test_smoke_predict_end_to_end(tmp_path):
  """Real training through the CLI: sweep, fit, one 2x prediction run + its mis-sized twin;
  the rerun trains nothing."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, "-m", "experiments.chinchilla", "--preset=smoke", "--lr_check=none",
         f"--workdir={tmp_path}", "--predict=2", "--bootstrap=30"]
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  first = time.perf_counter() - start
  saved = json.load(open(tmp_path / "predictions.json"))
  assert [r["kind"] for r in saved["rows"]] == ["predict", "missized"]
  for r in saved["rows"]:
    assert r["achieved_loss"] is not None and 0 < r["achieved_loss"] < 6
  # the compute-optimal run always has a predicted loss; the mis-sized one needs approach 3's
  # L(N, D), which smoke-scale data may not support
  assert saved["rows"][0]["predicted_loss"]["value"] is not None
  assert saved["rows"][1]["achieved_penalty"] is not None
  assert "## Predictions tested by held-out runs" in open(tmp_path / "report.md").read()
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "predicted loss" in proc.stdout
  assert json.load(open(tmp_path / "predictions.json"))["rows"] == saved["rows"]
  print(f"smoke --predict wall time: {first:.0f} s")
