"""The cpu Chinchilla preset's design: >= 1.5 decades, 6-7 sizes per budget, the LR the first
sweep's LR check asked for, single pass over the corpus, and <= 45 min on 2 idle cores by the
throughput measured in the first committed sweep."""

import csv
import math
import os

import numpy as np

from experiments import chinchilla
from experiments.scaling import shapes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIRST_SWEEP = os.path.join(REPO, "experiments", "results", "chinchilla_cpu_lr0015", "results.csv")
TRAIN_TOKENS = 11_799_424  # the embedded corpus's training split (byte tokenizer, seq 128)
PER_RUN_S = 6.0  # compile, eval and checkpoint per run, measured in the first sweep


def _measured_rate():
  """FLOP/s as a function of N: median of flops / (wall - PER_RUN_S) per model size."""
  by_n = {}
  with open(FIRST_SWEEP) as f:
    for r in csv.DictReader(f):
      by_n.setdefault(float(r["params"]), []).append(
          float(r["flops"]) / (float(r["wall_time_s"]) - PER_RUN_S))
  n = np.array(sorted(by_n))
  rate = np.array([np.median(by_n[k]) for k in n])
  return lambda x: math.exp(np.interp(math.log(x), np.log(n), np.log(rate)))


def test_cpu_preset_is_wide_tuned_single_pass_and_fits_45_minutes():
  spec = chinchilla.chinchilla_preset("cpu")
  runs = shapes.plan_sweep(spec)
  assert math.log10(max(spec.budgets) / min(spec.budgets)) >= 1.5
  assert 6 <= spec.shapes_per_budget <= 7 and spec.lr_base == 1.5e-3
  for budget in spec.budgets:
    sizes = {r.params for r in runs if r.budget == budget and r.kind == "isoflop"}
    assert len(sizes) == spec.shapes_per_budget
  checks = {r.budget for r in runs if r.kind == "lr_check"}
  assert checks == {min(spec.budgets), max(spec.budgets)}
  assert max(r.tokens for r in runs) <= TRAIN_TOKENS
  rate = _measured_rate()
  wall_s = sum(PER_RUN_S + r.flops / rate(r.params) for r in runs)
  assert wall_s / 60 <= 40, wall_s / 60  # + ~2 min of analysis, with margin to 45
