"""moe_vs_dense with seeds: multiplier intervals from the seed bootstrap, and the multiplier
predicted at a larger budget checked by one MoE run (fake trainer)."""

import json

import pytest

from experiments import moe_vs_dense
from experiments.scaling import multiplier
from tests.experiments.test_predict_runs import NoisyFake
from tests.experiments.test_sweep import FakeTrain


def _specs():
  return moe_vs_dense.family_specs(moe_vs_dense.moe_preset("smoke"))


def test_intervals_need_seed_noise_and_noise_widens_them(tmp_path):
  specs = _specs()
  assert specs["dense"].seeds == 2
  exact = moe_vs_dense.run_moe(specs, str(tmp_path / "a"), bootstrap=50,
                               train_fn=FakeTrain(moe_bonus=0.05))
  analysis = json.load(open(exact["paths"]["comparison_json"]))
  assert analysis["seeds_per_point"] == [2, 2] and not analysis["seed_noise_relative_std"]
  assert analysis["bootstrap"] == 0  # identical seeds: nothing to redraw, no intervals
  assert all(row["multiplier_interval"] is None for row in analysis["intervals"])
  noisy = moe_vs_dense.run_moe(specs, str(tmp_path / "b"), bootstrap=50,
                               train_fn=NoisyFake(moe_bonus=0.05))
  analysis = json.load(open(noisy["paths"]["comparison_json"]))
  assert analysis["seed_noise_relative_std"] == pytest.approx(0.003 * 2 ** 0.5, rel=1e-6)
  widths = [r["gap_interval"][1] - r["gap_interval"][0] for r in analysis["intervals"]]
  assert all(w > 0 for w in widths)


def test_predicted_multiplier_is_checked_by_one_run_and_skipped_on_rerun(tmp_path):
  specs = _specs()
  fake = NoisyFake(moe_bonus=0.05)
  out = moe_vs_dense.run_moe(specs, str(tmp_path), bootstrap=50, predict=2.0, train_fn=fake)
  run = out["check"]["run"]
  assert out["check"]["status"]["trained"] == [run.run_id] and run.config.model.is_moe
  assert run.budget == pytest.approx(2 * max(specs["dense"].budgets))
  analysis = json.load(open(out["paths"]["comparison_json"]))
  check = analysis["checks"][0]
  assert check["run_id"] == run.run_id and check["achieved_loss"] is not None
  pred = analysis["predictions"][0]
  assert check["rel_error"] == pytest.approx(
      (check["achieved_loss"] - pred["moe_loss"]) / check["achieved_loss"])
  assert isinstance(check["inside"], bool) and check["achieved_multiplier"] > 0
  report = open(out["paths"]["report"]).read()
  assert "### Prediction at C" in report and run.run_id in report
  again = NoisyFake(moe_bonus=0.05)
  out = moe_vs_dense.run_moe(specs, str(tmp_path), bootstrap=50, predict=2.0, train_fn=again)
  assert again.calls == [] and out["check"]["status"]["skipped"] == [run.run_id]


def test_trend_prediction_recovers_a_known_power_law():
  comparison = {"budgets": [{"C": c, "multiplier": 2 * (c / 1e12) ** 0.1} for c in
                            (1e12, 4e12, 1.6e13)],
                "dense_power_law": {"A": 10.0, "alpha": 0.1},
                "moe": [{"C": c, "N_opt": 0.5 * c ** 0.5} for c in (1e12, 4e12)]}
  pred = multiplier._predict_one(comparison, 6.4e13)
  assert pred["multiplier"] == pytest.approx(2 * 64 ** 0.1)
  assert pred["moe_loss"] == pytest.approx(10 * (pred["multiplier"] * 6.4e13) ** -0.1)
  assert pred["moe_N_opt"] == pytest.approx(0.5 * 6.4e13 ** 0.5)
