"""Sweep runner: skip/resume, shards, results; the CLIs' pipelines with a fake trainer; smoke."""

import csv
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import chinchilla, moe_vs_dense
from experiments.scaling import laws, shapes
from experiments.scaling import sweep
from model import flops
from train.loop import TrainingDiverged

SMOKE = chinchilla.chinchilla_preset("smoke")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FakeTrain:
  """Stands in for train.loop.train: Chinchilla's law as the loss, no training."""

  def __init__(self, stop_once=(), diverge=(), moe_bonus=0.0):
    self.calls, self.stop_once = [], set(stop_once)
    self.diverge, self.moe_bonus = diverge, moe_bonus

  def __call__(self, config, workdir):
    run_id = os.path.basename(workdir)
    self.calls.append(run_id)
    os.makedirs(workdir, exist_ok=True)
    if run_id in self.diverge:
      raise TrainingDiverged("loss became NaN")
    if run_id in self.stop_once:
      self.stop_once.discard(run_id)
      return {"stopped_early": True, "step": 1}
    tokens = config.train.steps * config.train.batch_size * config.data.seq_len
    n = flops.param_counts(config.model)["active"]
    loss = float(laws.loss(n, tokens)) * (1 - self.moe_bonus * config.model.is_moe)
    loss *= 1 + 0.01 * abs(np.log(config.train.learning_rate / 0.01))
    return {"val_loss": loss, "train_loss": loss + 0.01, "tokens": tokens, "stopped_early": False,
            "flops_per_token": flops.flops_per_token(config.model, config.data.seq_len, "exact"),
            "tokens_per_s": 1000.0, "val_tokens": 512.0}


@pytest.fixture(scope="module")
def runs():
  return shapes.plan_sweep(SMOKE)


def test_rerun_skips_finished_runs(tmp_path, runs):
  fake = FakeTrain()
  status = sweep.run_sweep(runs, str(tmp_path), train_fn=fake)
  assert fake.calls == [r.run_id for r in runs] == status["trained"]
  again = FakeTrain()
  status = sweep.run_sweep(runs, str(tmp_path), train_fn=again)
  assert again.calls == [] and status["skipped"] == [r.run_id for r in runs]
  results, missing = sweep.collect_results(str(tmp_path), runs)
  assert missing == [] and [r["run_id"] for r in results] == [r.run_id for r in runs]
  for run, result in zip(runs, results):
    assert result["tokens"] == run.tokens and result["flops"] == run.flops
    assert result["loss"] > 0 and result["wall_time_s"] >= 0


def test_interrupted_run_stops_the_sweep_and_resumes(tmp_path, runs):
  stop = runs[2].run_id
  fake = FakeTrain(stop_once=[stop])
  status = sweep.run_sweep(runs, str(tmp_path), train_fn=fake)
  assert status["interrupted"] == stop and fake.calls == [r.run_id for r in runs[:3]]
  assert not os.path.exists(os.path.join(sweep.run_dir(str(tmp_path), stop), sweep.RESULT_FILE))
  fake.calls = []
  status = sweep.run_sweep(runs, str(tmp_path), train_fn=fake)
  assert fake.calls == [r.run_id for r in runs[2:]] and status["interrupted"] is None
  assert status["skipped"] == [r.run_id for r in runs[:2]]


def test_shards_partition_the_runs(tmp_path, runs):
  calls = []
  for i in range(3):
    fake = FakeTrain()
    sweep.run_sweep(runs, str(tmp_path), shard_index=i, num_shards=3, train_fn=fake)
    assert fake.calls == [r.run_id for r in runs if r.index % 3 == i]
    calls += fake.calls
  assert sorted(calls) == sorted(r.run_id for r in runs)
  assert sweep.collect_results(str(tmp_path), runs)[1] == []
  with pytest.raises(ValueError, match="shard_index"):
    sweep.shard_runs(runs, 3, 3)


def test_results_made_with_other_settings_are_refused(tmp_path, runs):
  sweep.run_sweep(runs[:1], str(tmp_path), train_fn=FakeTrain())
  changed = dataclasses.replace(SMOKE, lr_base=SMOKE.lr_base * 2)
  with pytest.raises(ValueError, match="different settings"):
    sweep.run_sweep(shapes.plan_sweep(changed)[:1], str(tmp_path), train_fn=FakeTrain())


def test_diverged_run_is_finished_without_a_loss(tmp_path, runs):
  fake = FakeTrain(diverge=[runs[0].run_id])
  sweep.run_sweep(runs[:2], str(tmp_path), train_fn=fake)
  results, _ = sweep.collect_results(str(tmp_path), runs[:2])
  assert results[0]["diverged"] and results[0]["loss"] is None
  assert sweep.analysis_rows(results)[0]["loss"] is None
  path = sweep.write_results_csv(str(tmp_path / "r.csv"), results)
  rows = list(csv.DictReader(open(path)))
  assert list(rows[0]) == list(sweep.CSV_COLUMNS) and rows[0]["loss"] == ""
  for column in ("params", "tokens", "loss", "flops", "budget", "non_embedding_params",
                 "non_embedding_flops", "run_id", "shape", "lr", "wall_time_s"):
    assert column in rows[0]
  assert float(rows[1]["lr"]) == runs[1].config.train.learning_rate


def test_estimate_interpolates_measured_speeds(runs):
  iso = [r for r in runs if r.kind == "isoflop"]
  small, large = min(iso, key=lambda r: r.params), max(iso, key=lambda r: r.params)
  speeds = {small.run_id: {"tokens_per_s": 1e4, "compile_s": 2.0},
            large.run_id: {"tokens_per_s": 1e3, "compile_s": 4.0}}
  est = sweep.estimate_wall_time(runs, speeds, extra_per_run_s=1.0)
  eval_tokens = small.config.train.eval_batches * small.batch_size * SMOKE.seq_len
  assert est["per_run_s"][small.run_id] == pytest.approx(
      3.0 + (small.tokens + eval_tokens / 3) / 1e4)
  assert est["per_run_s"][large.run_id] == pytest.approx(
      5.0 + (large.tokens + eval_tokens / 3) / 1e3)
  assert est["total_s"] == pytest.approx(sum(est["per_run_s"].values()))


def _check_outputs(workdir, names):
  for name in names:
    path = os.path.join(workdir, name)
    assert os.path.getsize(path) > 0, name


def test_chinchilla_pipeline_with_fake_training(tmp_path, runs):
  workdir = str(tmp_path)
  kw = dict(bootstrap=0, train_fn=FakeTrain())
  out = chinchilla.run_experiment(SMOKE, workdir, shard_index=0, num_shards=2, **kw)
  assert out["missing"] and not out["paths"]
  out = chinchilla.run_experiment(SMOKE, workdir, analyze_only=True, **kw)
  assert out["missing"] and out["paths"]  # partial report, says what is missing
  assert "have no result yet" in open(out["paths"]["report"]).read()
  out = chinchilla.run_experiment(SMOKE, workdir, shard_index=1, num_shards=2, **kw)
  assert not out["missing"]
  _check_outputs(workdir, ["report.md", "results.csv", "runs.csv", "analysis.json",
                           "isoflop.png", "loss_vs_flops.png", "plan.json"])
  report = open(os.path.join(workdir, "report.md")).read()
  for text in ("smoke test", "Learning-rate check", "Verdict", "Sweep design", "## Checks"):
    assert text in report
  analysis = json.load(open(os.path.join(workdir, "analysis.json")))
  assert [r["multiplier"] for r in analysis["lr_check"][0]["runs"]] == [0.5, 1.0, 2.0]
  losses = [r["loss"] for r in analysis["lr_check"][0]["runs"]]
  assert analysis["lr_check"][0]["chosen_is_best"] == (min(losses) == losses[1])
  rows = list(csv.DictReader(open(os.path.join(workdir, "results.csv"))))
  assert len(rows) == len(runs)


def test_moe_comparison_recovers_a_known_multiplier():
  c = np.array([1e12, 4e12, 1.6e13])
  dense = [{"C": x, "loss_opt": 10 * x ** -0.1} for x in c]
  law = moe_vs_dense.power_law(c, [d["loss_opt"] for d in dense])
  assert law["alpha"] == pytest.approx(0.1) and law["A"] == pytest.approx(10)
  target = 10 * (2 * c[1]) ** -0.1
  c_eq, method = moe_vs_dense.dense_compute_for_loss(target, dense, law)
  assert method == "interpolated" and c_eq == pytest.approx(2 * c[1], rel=1e-9)
  c_eq, method = moe_vs_dense.dense_compute_for_loss(10 * (3 * c[2]) ** -0.1, dense, law)
  assert method.startswith("power law") and c_eq == pytest.approx(3 * c[2], rel=1e-9)
  n = np.geomspace(1e4, 1e6, 5)
  opt = moe_vs_dense.isoflop_optimum(n, 2 + (np.log(n) - np.log(1e5)) ** 2)
  assert opt["source"] == "parabola" and opt["N_opt"] == pytest.approx(1e5)


def test_moe_pipeline_with_fake_training(tmp_path):
  specs = moe_vs_dense.family_specs(moe_vs_dense.moe_preset("smoke"))
  runs = moe_vs_dense.plan(specs)
  assert [r.index for r in runs] == list(range(len(runs)))
  assert {moe_vs_dense.family_of(r.record()) for r in runs} == {"dense", "moe"}
  out = chinchilla.run_experiment(specs["dense"], str(tmp_path), runs=runs, bootstrap=0,
                                  report_fn=moe_vs_dense.write_moe_report,
                                  train_fn=FakeTrain(moe_bonus=0.05))
  _check_outputs(str(tmp_path), ["report.md", "results.csv", "comparison.json",
                                 "isoflop_moe_vs_dense.png", "envelope_moe_vs_dense.png"])
  comparison = json.load(open(tmp_path / "comparison.json"))["comparison"]
  for row in comparison["budgets"]:
    assert row["moe_loss"] < row["dense_loss"]
    assert row["gap"] > 0 and (row["multiplier"] is None or row["multiplier"] > 1)
  assert "compute multiplier" in open(out["paths"]["report"]).read()


@pytest.mark.slow
def test_measure_speed_on_a_tiny_config(runs):
  speed = sweep.measure_speed(runs[0].config, min_seconds=0.1)
  assert speed["tokens_per_s"] > 0 and speed["compile_s"] > 0


@pytest.mark.slow
def test_smoke_preset_end_to_end(tmp_path):
  """Real training through the CLI, on one CPU device (as users run it)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  start = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.chinchilla", "--preset=smoke",
       f"--workdir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  _check_outputs(str(tmp_path), ["report.md", "results.csv", "runs.csv", "analysis.json",
                                 "isoflop.png", "loss_vs_flops.png"])
  report = open(tmp_path / "report.md").read()
  assert "smoke test" in report and "Learning-rate check" in report
  for png in [l.split("(")[1].rstrip(")") for l in report.splitlines() if l.startswith("![")]:
    assert os.path.getsize(tmp_path / png) > 0
  results, missing = sweep.collect_results(str(tmp_path), shapes.plan_sweep(SMOKE))
  assert not missing and all(r["loss"] is not None and 0 < r["loss"] < 6 for r in results)
  print(f"smoke preset wall time: {time.perf_counter() - start:.0f} s")


def test_a_changed_sweep_is_refused_before_its_plan_is_rewritten(tmp_path, runs):
  workdir = str(tmp_path)
  chinchilla.run_experiment(SMOKE, workdir, bootstrap=0, train_fn=FakeTrain(),
                            shard_index=0, num_shards=4)
  plan = open(os.path.join(workdir, "plan.json")).read()
  changed = dataclasses.replace(SMOKE, lr_base=SMOKE.lr_base * 2)
  with pytest.raises(ValueError, match="planned with other settings"):
    chinchilla.run_experiment(changed, workdir, bootstrap=0, train_fn=FakeTrain(),
                              shard_index=0, num_shards=4)
  assert open(os.path.join(workdir, "plan.json")).read() == plan


def test_a_plan_from_before_a_new_config_field_still_resumes(tmp_path, runs):
  """A field added to a config since the sweep was planned (at its default) is no change;
  the same field at another value is."""
  workdir = str(tmp_path)
  chinchilla.run_experiment(SMOKE, workdir, bootstrap=0, train_fn=FakeTrain(),
                            shard_index=0, num_shards=4)
  path = os.path.join(workdir, "plan.json")
  plan = json.load(open(path))
  assert ", tokenize_workers=0" in plan["spec"]
  plan["spec"] = plan["spec"].replace(", tokenize_workers=0", "")  # as planned before it existed
  with open(path, "w") as f:
    json.dump(plan, f)
  chinchilla.run_experiment(SMOKE, workdir, bootstrap=0, train_fn=FakeTrain(),
                            shard_index=0, num_shards=4)
  changed = dataclasses.replace(SMOKE, data=dataclasses.replace(SMOKE.data, tokenize_workers=2))
  with open(path, "w") as f:
    json.dump(plan, f)
  with pytest.raises(ValueError, match="planned with other settings"):
    chinchilla.run_experiment(changed, workdir, bootstrap=0, train_fn=FakeTrain(),
                              shard_index=0, num_shards=4)


def test_recorded_run_configs_tolerate_fields_added_at_their_default():
  defaults = {"data": {"seq_len": 128, "tokenize_workers": 0}, "head": "lm"}
  new = {"data": {"seq_len": 64, "tokenize_workers": 0}, "head": "lm"}
  assert sweep.same_settings({"data": {"seq_len": 64}, "head": "lm"}, new, defaults)
  assert not sweep.same_settings({"data": {"seq_len": 32}, "head": "lm"}, new, defaults)
  assert not sweep.same_settings(
      {"data": {"seq_len": 64}, "head": "lm"},
      {"data": {"seq_len": 64, "tokenize_workers": 2}, "head": "lm"}, defaults)
  assert not sweep.same_settings({"data": {"seq_len": 64, "gone": 1}, "head": "lm"}, new,
                                 defaults)

