"""Predictions from a fit (experiments/scaling/predict.py) and seed averaging.

Interval calibration: sweeps drawn from a known law, predictions at 10x and 100x the largest
budget must contain the truth in >= 90% of 50 draws. Misspecification (documented in
`_broken_law`): the truth's parameter term flattens above the sampled sizes, so the fit's N_opt
is wrong far out and its interval misses the truth in most draws.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.scaling import approaches, laws, predict, runs

LAW = {"E": 1.2, "A": 40.0, "B": 60.0, "alpha": 0.35, "beta": 0.3}
BUDGETS = np.geomspace(1e11, 3e12, 5)  # 1.5 decades, as the CPU preset
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sweep(rng, loss_fn, sigma=0.005, sizes=7, spread=16.0):
  """One IsoFLOP sweep: per budget `sizes` models spanning `spread`, centred within +-35% of
  the true optimum (a sweep's guess), 6ND compute, multiplicative log-normal noise."""
  rows = []
  for c in BUDGETS:
    centre = laws.compute_optimal(c, LAW)["N_opt"] * math.exp(rng.uniform(-0.3, 0.3))
    for n in centre * np.geomspace(spread ** -0.5, spread ** 0.5, sizes):
      d = c / (6 * n)
      rows.append({"params": n, "tokens": d, "budget": c,
                   "loss": float(loss_fn(n, d) * math.exp(rng.normal(0, sigma)))})
  return rows


def _broken_law(n, d, n_break=3.4e5, alpha_above=0.15):
  """LAW, except that above n_break (2x the largest budget's N_opt) the parameter term falls
  as N^-0.15 instead of N^-0.35: bigger models help less than the sweep could see."""
  n = np.asarray(n, float)
  n_term = np.where(n <= n_break, LAW["A"] * n ** -LAW["alpha"],
                    LAW["A"] * n_break ** -LAW["alpha"] * (n_break / n) ** alpha_above)
  return LAW["E"] + n_term + LAW["B"] * np.asarray(d, float) ** -LAW["beta"]


def _true_optimum(loss_fn, compute):
  n = np.geomspace(1e3, 1e9, 40001)
  loss = loss_fn(n, compute / (6 * n))
  i = int(np.argmin(loss))
  return {"N_opt": n[i], "loss": float(loss[i])}


def _coverage(loss_fn, truth_fn, draws=50):
  rng = np.random.default_rng(0)
  hits = {}
  for draw in range(draws):
    rows = _sweep(rng, loss_fn)
    analysis = {"budgets": list(BUDGETS), "confidence": 0.95,
                "approach1": approaches.approach1(rows, bootstrap=200, seed=draw),
                "approach2": approaches.approach2(rows, bootstrap=200, seed=draw)}
    for k in (10, 100):
      truth = truth_fn(BUDGETS[-1] * k)
      pred = predict.predict(analysis, BUDGETS[-1] * k)
      for name in ("approach1", "approach2"):
        for key, true_key in (("n_opt", "N_opt"), ("loss", "loss")):
          iv = pred[name].get(key, {}).get("interval")
          hits.setdefault((name, k, key), []).append(
              iv is not None and iv[0] <= truth[true_key] <= iv[1])
  return {key: float(np.mean(v)) for key, v in hits.items()}


def test_prediction_intervals_are_calibrated_on_a_known_law():
  cover = _coverage(lambda n, d: laws.loss(n, d, LAW),
                    lambda c: laws.compute_optimal(c, LAW))
  assert all(v >= 0.9 for v in cover.values()), cover


def test_prediction_is_wrong_when_the_law_is_misspecified():
  cover = _coverage(_broken_law, lambda c: _true_optimum(_broken_law, c))
  assert cover[("approach2", 100, "n_opt")] <= 0.1, cover
  assert cover[("approach2", 10, "n_opt")] <= 0.4, cover
  # the same machinery on the unbroken law at the same budgets is calibrated (test above)


def test_point_predictions_follow_the_fitted_laws():
  rows = _sweep(np.random.default_rng(1), lambda n, d: laws.loss(n, d, LAW), sigma=0.0)
  analysis = approaches.analyze(rows, bootstrap=20, bootstrap_parametric=4, grid=8)
  c = 3e13
  pred = predict.predict(analysis, c)
  a2 = analysis["approach2"]
  assert pred["approach2"]["n_opt"]["value"] == pytest.approx(a2["N_coefficient"] * c ** a2["a"])
  assert pred["approach2"]["d_opt"]["value"] == pytest.approx(a2["D_coefficient"] * c ** a2["b"])
  truth = laws.compute_optimal(c, LAW)
  assert pred["approach3"]["n_opt"]["value"] == pytest.approx(truth["N_opt"], rel=0.02)
  assert pred["approach3"]["loss"]["value"] == pytest.approx(truth["loss"], rel=1e-3)
  assert pred["approach2"]["loss"]["value"] == pytest.approx(truth["loss"], rel=0.01)
  assert pred["extrapolation_decades"] == pytest.approx(1.0)
  # approach 3's loss of any (N, D) and the paired penalty of a 4x oversized model
  n, d = truth["N_opt"], truth["D_opt"]
  assert predict.loss_at(analysis, n, d)["value"] == pytest.approx(truth["loss"], rel=1e-3)
  pen = predict.penalty(analysis, (n, 4 * n), (d, d / 4))
  true_pen = laws.loss(4 * n, d / 4, LAW) - laws.loss(n, d, LAW)
  assert pen["value"] == pytest.approx(true_pen, rel=0.05) and pen["value"] > 0
  with pytest.raises(ValueError, match="positive"):
    predict.predict(analysis, -1.0)


def _hand_built(seed_losses):
  """3 budgets x 3 sizes on the exact parabola loss = 2 + (ln N - ln N*(C))^2 / 4, with
  ln N*(C) = 0.5 ln C - 2: a = 0.5 exactly. seed_losses[i] adds per-seed offsets."""
  rows = []
  for c in (1e10, 1e11, 1e12):
    centre = 0.5 * math.log(c) - 2
    for j, dx in enumerate((-1.0, 0.0, 1.0)):
      n = math.exp(centre + dx)
      for s, off in enumerate(seed_losses[j]):
        rows.append({"params": n, "tokens": c / (6 * n), "budget": c, "seed": s,
                     "loss": 2 + dx * dx / 4 + off})
  return rows


def test_seed_averaging_and_noise_on_a_hand_built_case():
  rows = _hand_built([(-0.01, 0.01), (0.0, 0.0), (0.02, -0.02)])
  table = runs.normalize_runs(rows)
  assert len(table) == 9 and list(table.n_seeds) == [2] * 9
  np.testing.assert_allclose(np.sort(np.unique(np.round(table.loss, 12))), [2.0, 2.25])
  noise = runs.seed_noise(table)
  # per budget: squared deviations 2e-4 + 0 + 8e-4, 3 degrees of freedom
  assert noise["std"] == pytest.approx(math.sqrt(1e-3 / 3))
  assert noise["dof"] == 9 and noise["seeds_per_point"] == [2, 2]
  # the records round-trip with their seeds
  again = runs.normalize_runs(table.records())
  np.testing.assert_allclose(again.seed_loss, table.seed_loss)
  # redrawing two seeds gives y - 0.01, y, y + 0.01 with probabilities 1/4, 1/2, 1/4
  boot = runs.bootstrap_losses(table, 20000, np.random.default_rng(0))
  first = boot[:, 0] - table.loss[0]
  freq = [np.mean(np.isclose(first, v)) for v in (-0.01, 0.0, 0.01)]
  np.testing.assert_allclose(freq, [0.25, 0.5, 0.25], atol=0.015)


def test_seed_noise_widens_the_bootstrap_interval_documented_amounts():
  exact = approaches.approach2(_hand_built([(0.0,), (0.0,), (0.0,)]), bootstrap=200)
  assert exact["a"] == pytest.approx(0.5)
  # without noise every resample with 3 distinct sizes recovers the exact vertex: a point
  assert exact["bootstrap"]["a"] == pytest.approx([0.5, 0.5])
  noisy = approaches.approach2(_hand_built([(-0.01, 0.01), (0.0, 0.0), (0.02, -0.02)]),
                               bootstrap=400)
  assert noisy["a"] == pytest.approx(0.5)  # the seed means are exact
  lo, hi = noisy["bootstrap"]["a"]
  assert lo < 0.5 < hi and hi - lo > 0.005
  # Documented bound: through (-1, y- + e1), (0, y0), (1, y+ + e3) the vertex is at
  # -(e3 - e1) / (2 (0.5 + e1 + e3)) with e1 in {-0.01, 0, 0.01}, e3 in {-0.02, 0, 0.02}: at most
  # 0.03 / 0.98 = 0.0306 from the truth. The slope over any two budgets (a resample can lose a
  # budget) moves by at most 2 * 0.0306 / ln 10 = 0.0266.
  bound = 2 * (0.03 / 0.98) / math.log(10)
  assert 0.5 - bound - 1e-9 <= lo and hi <= 0.5 + bound + 1e-9


def test_fit_scaling_cli_writes_prediction_json(tmp_path):
  rng = np.random.default_rng(2)
  rows = _sweep(rng, lambda n, d: laws.loss(n, d, LAW))
  csv_path = tmp_path / "runs.csv"
  with open(csv_path, "w") as f:
    f.write("params,tokens,loss,budget\n")
    f.writelines(f"{r['params']},{r['tokens']},{r['loss']},{r['budget']}\n" for r in rows)
  out = tmp_path / "fit"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.fit_scaling", f"--csv={csv_path}", "--bootstrap=30",
       "--bootstrap_parametric=3", "--grid=8", "--predict_flops=3e13", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  pred = json.loads((out / "prediction.json").read_text())
  assert pred["compute"] == 3e13
  for name in ("approach1", "approach2", "approach3"):
    for key in ("n_opt", "d_opt", "loss"):
      entry = pred[name][key]
      assert entry["value"] > 0 and entry["interval"][0] <= entry["interval"][1], (name, key)
  assert "prediction at C = 3e+13" in proc.stdout
  bad = subprocess.run([sys.executable, "-m", "experiments.fit_scaling", f"--csv={csv_path}",
                        "--predict_flops=-5"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode != 0 and "--predict_flops must be a positive" in bad.stderr
