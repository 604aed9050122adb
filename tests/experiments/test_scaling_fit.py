"""Scaling-law analysis on synthetic sweeps whose true law is known (no training)."""

import json
import math

import numpy as np
import pytest
from scipy import optimize

from experiments.scaling import approaches, laws, parametric

BUDGETS = (1e15, 1e16, 1e17, 1e18, 1e19)


def make_runs(law=laws.CHINCHILLA, budgets=BUDGETS, n_sizes=8, spread=16.0, noise=0.005,
              seed=0, jitter=2.0, budget_column=True):
  """IsoFLOP sweep: per budget, n_sizes models spread x`spread` around a centre that is the true
  optimum moved by a random factor in [1/jitter, jitter]; D = C/(6N); lognormal loss noise."""
  rng = np.random.default_rng(seed)
  runs = []
  for c in budgets:
    centre = laws.compute_optimal(c, law)["N_opt"] * math.exp(
        rng.uniform(-math.log(jitter), math.log(jitter)))
    for n in centre * np.geomspace(spread ** -0.5, spread ** 0.5, n_sizes):
      d = c / (6.0 * n)
      run = {"params": n, "tokens": d,
             "loss": float(laws.loss(n, d, law) * math.exp(noise * rng.standard_normal()))}
      if budget_column:
        run["budget"] = c
      runs.append(run)
  return runs


def make_embedding_runs(law=laws.CHINCHILLA, vocab=32000, aspect=64.0, noise=0.0, seed=0):
  """Transformers with n_layers = d/aspect: N_total = 12 n_layers d^2 + vocab d. Loss follows
  the *total*-parameter law; non-embedding counts are reported alongside."""
  rng = np.random.default_rng(seed)
  runs = []
  for c in BUDGETS:
    for n in laws.compute_optimal(c, law)["N_opt"] * np.geomspace(0.25, 4.0, 8):
      roots = np.roots([12.0 / aspect, 0.0, vocab, -n])
      d_model = float(roots[np.abs(roots.imag) < 1e-9].real.max())
      tokens = c / (6.0 * n)
      runs.append({"params": n, "tokens": tokens, "budget": c,
                   "non_embedding_params": n - vocab * d_model,
                   "loss": float(laws.loss(n, tokens, law)
                                 * math.exp(noise * rng.standard_normal()))})
  return runs


# ----------------------------------------------------------------------------- closed form


def test_compute_optimal_matches_hand_arithmetic():
  # Chinchilla (paper body): E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, at Gopher's C.
  # alpha*A = 0.34*406.4 = 138.176; beta*B = 0.28*410.7 = 114.996; ratio = 1.2015722...
  # G = ratio^(1/0.62) = 1.34471; a = 0.28/0.62 = 0.451613; b = 0.34/0.62 = 0.548387
  # C/6 = 9.6e22; N_opt = G * 9.6e22^a = 3.2190e10; D_opt = 9.6e22^b / G = 2.9823e12
  # (92.6 tokens/param: the rounded law is far from Chinchilla's own 20, cf. Epoch AI 2024).
  out = laws.compute_optimal(5.76e23, laws.CHINCHILLA)
  g = (138.176 / 114.996) ** (1 / 0.62)
  assert out["G"] == pytest.approx(g, rel=1e-12)
  assert out["G"] == pytest.approx(1.34471, rel=1e-5)
  assert out["a"] == pytest.approx(0.451613, abs=1e-6)
  assert out["b"] == pytest.approx(0.548387, abs=1e-6)
  assert out["N_opt"] == pytest.approx(g * 9.6e22 ** (0.28 / 0.62), rel=1e-12)
  assert out["N_opt"] == pytest.approx(3.2190e10, rel=1e-4)
  assert out["D_opt"] == pytest.approx(2.9823e12, rel=1e-4)
  assert out["tokens_per_param"] == pytest.approx(92.65, rel=1e-3)
  assert 6 * out["N_opt"] * out["D_opt"] == pytest.approx(5.76e23, rel=1e-12)


@pytest.mark.parametrize("law", [laws.CHINCHILLA, laws.EPOCH_AI])
def test_compute_optimal_is_the_isoflop_minimum(law):
  for c in (1e18, 5.76e23):
    res = optimize.minimize_scalar(lambda x: laws.loss(math.exp(x), c / (6 * math.exp(x)), law),
                                   bounds=(5, 40), method="bounded",
                                   options={"xatol": 1e-10})
    assert math.exp(res.x) == pytest.approx(laws.compute_optimal(c, law)["N_opt"], rel=1e-4)


def test_epoch_constants_give_near_equal_scaling():
  a, b = laws.exponents(laws.EPOCH_AI["alpha"], laws.EPOCH_AI["beta"])
  assert a == pytest.approx(0.5126, abs=1e-4) and a + b == pytest.approx(1.0)


# ----------------------------------------------------------------------------- approach 3 pieces


def test_lse_form_and_gradient_match_references():
  rng = np.random.default_rng(1)
  log_n, log_d = rng.uniform(14, 22, 30), rng.uniform(17, 25, 30)
  law = laws.EPOCH_AI
  ref = np.log(law["E"] + law["A"] * np.exp(-law["alpha"] * log_n)
               + law["B"] * np.exp(-law["beta"] * log_d))
  theta = laws.law_to_theta(law)
  np.testing.assert_allclose(laws.log_loss_lse(theta, log_n, log_d)[0], ref, rtol=1e-13)
  log_l = ref + rng.normal(0, 3e-3, 30)  # mix of quadratic and linear Huber zones
  w = rng.integers(0, 3, 30).astype(float)
  theta0 = theta + rng.normal(0, 0.02, 5)
  f, grad = parametric.objective(theta0, log_n, log_d, log_l, w)
  r = laws.log_loss_lse(theta0, log_n, log_d)[0] - log_l
  f_ref = sum(wi * (0.5 * ri * ri if abs(ri) <= 1e-3 else 1e-3 * (abs(ri) - 5e-4))
              for wi, ri in zip(w, r))
  assert f == pytest.approx(f_ref, rel=1e-12)
  eps = 1e-6
  fd = [(parametric.objective(theta0 + eps * e, log_n, log_d, log_l, w)[0]
         - parametric.objective(theta0 - eps * e, log_n, log_d, log_l, w)[0]) / (2 * eps)
        for e in np.eye(5)]
  np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-9)
  grid_vals = parametric.grid_objective(np.stack([theta0, theta]), log_n, log_d, log_l, w)
  assert grid_vals[0] == pytest.approx(f, rel=1e-10)


def test_init_grid_is_chinchillas():
  grid = parametric.init_grid()
  assert grid.shape == (4500, 5)
  assert sorted(set(grid[:, 0])) == [0, 5, 10, 15, 20, 25]
  assert sorted(set(grid[:, 2])) == [-1, -0.5, 0, 0.5, 1]
  assert sorted(set(grid[:, 3])) == [0, 0.5, 1, 1.5, 2]


def test_approach3_recovers_noise_free_law_and_converges():
  runs = make_runs(law=laws.EPOCH_AI, noise=0.0, seed=2)
  out = approaches.approach3(runs, grid=16)
  assert out["converged"] and out["grad_rel"] < 1e-6
  assert out["alpha"] == pytest.approx(laws.EPOCH_AI["alpha"], abs=1e-2)
  assert out["beta"] == pytest.approx(laws.EPOCH_AI["beta"], abs=1e-2)
  assert out["E"] == pytest.approx(laws.EPOCH_AI["E"], rel=1e-2)
  ref = laws.compute_optimal(1e19, laws.EPOCH_AI)
  at_1e19 = next(o for o in out["optimal"] if o["C"] == 1e19)
  assert at_1e19["tokens_per_param"] == pytest.approx(ref["tokens_per_param"], rel=1e-2)


# ----------------------------------------------------------------------------- recovery


@pytest.fixture(scope="module")
def noisy_analysis():
  runs = make_runs(law=laws.CHINCHILLA, noise=0.005, seed=0)
  return runs, approaches.analyze(runs, bootstrap=200, bootstrap_parametric=8, grid=16, seed=0)


def test_all_approaches_recover_a_from_noisy_sweep(noisy_analysis):
  _, out = noisy_analysis
  a_true = laws.exponents(laws.CHINCHILLA["alpha"], laws.CHINCHILLA["beta"])[0]
  # Approach 1 is quantised to the trained sizes (steps of 16^(1/7) = 1.49x), hence 0.05 too.
  for name in ("approach1", "approach2", "approach3"):
    assert out[name]["a"] == pytest.approx(a_true, abs=0.05), name
  assert out["approach2"]["a"] == pytest.approx(a_true, abs=0.02)
  assert out["approach2"]["b"] == pytest.approx(1 - a_true, abs=0.02)
  lo, hi = out["approach2"]["bootstrap"]["a"]
  assert lo < a_true < hi and hi - lo < 0.1
  assert out["approach2"]["n_vertex_in_range"] == 5 and not out["approach2"]["warnings"]
  assert out["approach3"]["converged"]
  lo3, hi3 = out["approach3"]["bootstrap"]["a"]
  assert lo3 <= out["approach3"]["a"] <= hi3
  json.dumps(out, allow_nan=False)


def test_approach2_matches_a_direct_parabola_fit(noisy_analysis):
  runs, out = noisy_analysis
  c = 1e17
  sel = [r for r in runs if r["budget"] == c]
  x = np.log([r["params"] for r in sel])
  c2, c1, _ = np.polyfit(x, [r["loss"] for r in sel], 2)
  b = next(b for b in out["approach2"]["budgets"] if b["C"] == c)
  assert b["N_opt"] == pytest.approx(math.exp(-c1 / (2 * c2)), rel=1e-8)
  assert b["D_opt"] == pytest.approx(c / (6 * b["N_opt"]), rel=1e-8)


def test_bootstrap_is_seeded():
  runs = make_runs(seed=3)
  a = approaches.approach2(runs, bootstrap=50, seed=7)["bootstrap"]["a"]
  assert approaches.approach2(runs, bootstrap=50, seed=7)["bootstrap"]["a"] == a
  assert approaches.approach2(runs, bootstrap=50, seed=8)["bootstrap"]["a"] != a


def test_approach2_flags_vertex_outside_range_and_downward_parabola():
  runs = make_runs(noise=0.0, seed=4, jitter=1.0)
  for r in runs:
    if r["budget"] == 1e19:  # every model 8-128x larger than optimal: minimum off the grid
      r["params"] *= 32.0
      r["tokens"] /= 32.0
      r["loss"] = float(laws.loss(r["params"], r["tokens"]))
    if r["budget"] == 1e15:  # concave profile
      r["loss"] = 5.0 - 0.01 * (math.log(r["params"]) - 15.0) ** 2
  out = approaches.approach2(runs)
  by_c = {b["C"]: b for b in out["budgets"]}
  assert not by_c[1e19]["vertex_in_range"] and not by_c[1e19]["used_in_fit"]
  assert by_c[1e15]["opens_downward"] and not by_c[1e15]["used_in_fit"]
  assert out["n_used"] == 3 and len(out["warnings"]) == 2
  a_true = laws.exponents(laws.CHINCHILLA["alpha"], laws.CHINCHILLA["beta"])[0]
  assert out["a"] == pytest.approx(a_true, abs=1e-3)


def test_approach1_envelope_matches_brute_force_pareto_front():
  rng = np.random.default_rng(5)
  rows = [{"params": n, "tokens": t, "loss": float(laws.loss(n, t) + rng.normal(0, 0.01))}
          for n in np.geomspace(1e6, 1e8, 6) for t in np.geomspace(1e7, 1e10, 12)]
  out = approaches.approach1(rows, method="envelope")
  flops = [6 * r["params"] * r["tokens"] for r in rows]
  front = {i for i, r in enumerate(rows)
           if all(rows[j]["loss"] > r["loss"] for j in range(len(rows))
                  if flops[j] <= flops[i] and j != i)}
  assert {p["run"] for p in out["points"]} == front


# ----------------------------------------------------------------------------- accounting


def test_non_embedding_accounting_inflates_a():
  """Pearce & Song 2024, Porian et al. 2024: counting non-embedding parameters and FLOPs in a
  small-model sweep (vocab 32k) pushes the fitted a up, toward Kaplan's 0.73."""
  runs = make_embedding_runs()
  out = approaches.analyze(runs, bootstrap=0, bootstrap_parametric=0, grid=8)
  a_true = laws.exponents(laws.CHINCHILLA["alpha"], laws.CHINCHILLA["beta"])[0]
  shift = out["ablation"]["approach2_shift"]
  assert shift["a_total"] == pytest.approx(a_true, abs=0.01)
  assert shift["a_non_embedding"] > shift["a_total"] + 0.05
  assert out["ablation"]["approach1_shift"]["delta_a"] > 0.05


# ----------------------------------------------------------------------------- input handling


def test_runs_grouped_by_flops_without_budget_column():
  runs = make_runs(budget_column=False, seed=6)
  rng = np.random.default_rng(0)
  for r in runs:
    r["flops"] = 6 * r["params"] * r["tokens"] * (1 + rng.uniform(-0.02, 0.02))
  table = approaches.normalize_runs(runs)
  assert len(table.budgets) == 5 and not table.has_budget
  np.testing.assert_allclose(table.budgets, BUDGETS, rtol=0.03)
  cols = {k: [r[k] for r in runs] for k in runs[0]}  # a dict of columns works too
  assert len(approaches.normalize_runs(cols)) == len(runs)


def test_bad_runs_raise_clear_errors():
  with pytest.raises(ValueError, match="missing required column.*loss"):
    approaches.normalize_runs([{"params": 1e6, "tokens": 1e8}])
  with pytest.raises(ValueError, match="'params' must be a positive"):
    approaches.normalize_runs([{"params": -1, "tokens": 1e8, "loss": 3.0}])
  with pytest.raises(ValueError, match="not a number"):
    approaches.normalize_runs([{"params": "big", "tokens": 1e8, "loss": 3.0}])
  table = approaches.normalize_runs([{"params": 1e6, "tokens": 1e8, "loss": float("nan")},
                                     {"params": 1e6, "tokens": 1e8, "loss": 3.0}])
  assert len(table) == 1 and table.dropped[0]["row"] == 0
  few = make_runs(budgets=(1e15, 1e16), n_sizes=4)
  with pytest.raises(approaches.InsufficientDataError, match=">= 3 compute budgets"):
    approaches.approach2(few)
  with pytest.raises(approaches.InsufficientDataError, match=">= 5 runs"):
    approaches.approach3(few[:4])
  out = approaches.analyze(few, bootstrap=0, grid=4)
  assert "skipped" in out["approach2"] and "a" in out["approach3"]
