"""IsoFLOP sweep plans: budgets hit within 2%, N spread, schedule, LR rule, shape selection."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from experiments import chinchilla, moe_vs_dense
from experiments.scaling import shapes
from experiments.scaling import sweep
from model import flops
from train.config import Config

SPECS = {f"chinchilla-{p}": chinchilla.chinchilla_preset(p) for p in chinchilla.PRESETS}
SPECS.update({f"moe_vs_dense-{p}-{family}": spec for p in moe_vs_dense.PRESETS
              for family, spec in moe_vs_dense.family_specs(moe_vs_dense.moe_preset(p)).items()})


@pytest.fixture(scope="module", params=sorted(SPECS))
def planned(request):
  spec = SPECS[request.param]
  return spec, shapes.plan_sweep(spec)


def test_every_run_matches_its_budget_within_2_percent(planned):
  spec, runs = planned
  for r in runs:
    c = r.config
    tokens = c.train.steps * c.train.batch_size * c.data.seq_len
    fpt = flops.flops_per_token(c.model, c.data.seq_len, "exact")
    assert fpt == r.flops_per_token
    assert abs(tokens * fpt / r.budget - 1) <= 0.02, r.run_id
    assert c.train.steps >= 20


def test_every_budget_spreads_n_at_least_8x_around_the_expected_optimum(planned):
  spec, runs = planned
  for budget in spec.budgets:
    group = [r for r in runs if r.budget == budget and r.kind == "isoflop" and r.seed == 0]
    n = sorted(r.params for r in group)
    assert len(set(n)) == len(n) == spec.shapes_per_budget
    assert 3 <= len(n) <= 7
    assert n[-1] / n[0] >= 8.0, budget
    assert n[0] < shapes.expected_optimal_params(spec, budget) < n[-1]
    counts = [flops.param_counts(r.config.model) for r in group]
    assert [r.params for r in group] == [c["active"] for c in counts]
    assert len({r.batch_size for r in group}) == 1


def test_schedule_warmup_and_evaluation_are_fair(planned):
  spec, runs = planned
  for r in runs:
    t = r.config.train
    tokens_per_step = t.batch_size * r.config.data.seq_len
    assert t.eval_every == 0 and t.lr_floor == spec.lr_floor
    assert 3 <= t.warmup_steps <= max(3, int(0.1 * t.steps))
    if 3 < t.warmup_steps < int(0.1 * t.steps):
      assert abs(t.warmup_steps * tokens_per_step - r.params) <= tokens_per_step
    assert t.checkpoint_every <= t.steps
  assert len({r.batch_size * r.config.train.eval_batches for r in runs}) == 1
  assert len({r.config.data for r in runs}) == 1


def test_learning_rate_rule_and_lr_check_runs(planned):
  spec, runs = planned
  for r in runs:
    expected = spec.lr_base * (spec.lr_ref_width / r.shape.d_model) ** spec.lr_width_exponent
    assert r.config.train.learning_rate == pytest.approx(expected * r.lr_multiplier, rel=1e-12)
  checks = [r for r in runs if r.kind == "lr_check"]
  check_budgets = spec.lr_check_budgets or (min(spec.budgets),)
  assert sorted(r.lr_multiplier for r in checks) == sorted(spec.lr_check * len(check_budgets))
  for r in checks:
    group = [x for x in runs if x.budget == r.budget and x.kind == "isoflop" and x.seed == 0]
    middle = group[len(group) // 2]
    assert r.budget in check_budgets and r.shape == middle.shape
    assert dataclasses.replace(r.config, train=middle.config.train) == middle.config
    assert r.steps == middle.steps
    assert r.config.train.warmup_steps == middle.config.train.warmup_steps


def test_plan_is_deterministic_with_unique_ids(planned):
  spec, runs = planned
  again = shapes.plan_sweep(spec)
  assert [r.run_id for r in runs] == [r.run_id for r in again]
  assert [r.config for r in runs] == [r.config for r in again]
  assert len({r.run_id for r in runs}) == len(runs)
  assert [r.index for r in runs] == list(range(len(runs)))
  for r in runs:
    assert Config.from_dict(json.loads(r.config.to_json())) == r.config


def test_gpu_presets_are_bf16_and_need_a_bigger_corpus():
  spec = SPECS["chinchilla-gpu"]
  runs = shapes.plan_sweep(spec)
  assert all(r.config.model.dtype == "bfloat16" for r in runs)
  assert all(r.config.model.d_model % 64 == 0 for r in runs)
  embedded_windows = 11_800_000 // spec.seq_len
  with pytest.raises(ValueError, match="--data"):
    sweep.check_single_pass(runs, embedded_windows, embedded_windows * spec.seq_len)


def test_cpu_presets_fit_one_pass_over_the_embedded_corpus():
  from train.dataset import build_datasets
  spec = SPECS["chinchilla-cpu"]
  _, train_ds, val_ds, _ = build_datasets(spec.data)
  for name in ("chinchilla-cpu", "moe_vs_dense-cpu-dense", "moe_vs_dense-cpu-moe"):
    runs = shapes.plan_sweep(SPECS[name])
    assert sweep.check_single_pass(runs, train_ds.n_windows, train_ds.tokens_per_epoch) == []
    assert sweep.check_eval_windows(runs, val_ds.n_windows) == spec.eval_windows
  with pytest.raises(ValueError, match="repeat data"):
    sweep.check_single_pass(runs, 10, 10 * spec.seq_len)


def test_expected_optimum_is_exact_at_grid_points_and_monotone():
  spec = SPECS["chinchilla-cpu"]
  for shape in spec.shapes():
    s = shapes.shape_stats(spec, shape)
    budget = s["flops_per_token"] * spec.tokens_per_param * s["params"]
    assert shapes.expected_optimal_params(spec, budget) == pytest.approx(s["params"], rel=1e-9)
  n = [shapes.expected_optimal_params(spec, c) for c in np.geomspace(1e8, 1e15, 30)]
  assert all(b > a for a, b in zip(n, n[1:]))


def test_shape_selection_is_the_least_squares_ladder_match():
  spec = dataclasses.replace(SPECS["chinchilla-cpu"], shapes_per_budget=4)
  log_n = np.log([shapes.shape_stats(spec, s)["params"] for s in spec.shapes()])
  for budget in (1e11, 4e11, 2e12):
    n_opt = shapes.expected_optimal_params(spec, budget)
    targets = math.log(n_opt) + math.log(spec.spread) * np.linspace(-0.5, 0.5, 4)
    best = min(itertools.combinations(range(len(log_n)), 4),
               key=lambda c: sum((log_n[i] - t) ** 2 for i, t in zip(c, targets)))
    chosen = shapes.select_shapes(spec, budget)
    assert chosen == [spec.shapes()[i] for i in best]


def test_shape_family_and_moe_members():
  family = shapes.shape_family([16, 24, 56, 64, 128], aspect=32, head_dim=16)
  assert [(s.n_layers, s.d_model, s.n_heads) for s in family] == [
      (1, 16, 1), (1, 24, 2), (2, 56, 4), (2, 64, 4), (4, 128, 8)]
  for s in family:
    assert s.d_model % s.n_heads == 0 and (s.d_model // s.n_heads) % 2 == 0
  dense = family[3].model(shapes.SweepSpec(name="x", budgets=(1.0,), d_models=(64,)).base_model)
  moe_base = dataclasses.replace(dense, n_experts=8, experts_per_token=2)
  moe = family[3].model(moe_base)
  assert moe.expert_ffw_dim * 2 == dense.ffw_dim
  router = moe.n_layers * 8 * 64
  assert flops.param_counts(moe)["active"] == flops.param_counts(dense)["total"] + router


def test_budget_label():
  assert shapes.budget_label(1.5e12) == "1.5e12"
  assert shapes.budget_label(3e11) == "3e11"
  assert shapes.budget_label(1.25e16) == "1.25e16"


@pytest.mark.parametrize("change, message", [
    (dict(d_models=(16, 32, 64)), "shapes_per_budget"),
    (dict(min_steps=100_000), "steps"),
    (dict(d_models=(16, 20, 24, 28, 32, 36, 40), budgets=(7.6e10, 2.4e12), seed_budgets=()),
     "span only"),
    (dict(eval_windows=100), "eval_windows"),
    (dict(budgets=(1e11, 1e11)), "duplicates"),
    (dict(lr_check=(1.0,)), "lr_check"),
])
def test_bad_sweeps_fail_with_a_fix(change, message):
  with pytest.raises(ValueError, match=message):
    shapes.plan_sweep(dataclasses.replace(SPECS["chinchilla-cpu"], **change))


def test_command_line_overrides_reach_the_plan():
  spec = chinchilla.apply_overrides(SPECS["chinchilla-cpu"], {
      "budgets": ["3e11", "1e12"], "d_models": ["16", "24", "32", "48", "64", "96", "128"],
      "seq_len": 64, "lr_base": 1e-3, "warmup_fraction": 0.05, "lr_check": ["none"],
      "spread": 10.0, "dtype": None})
  assert spec.budgets == (3e11, 1e12) and spec.seq_len == 64 and spec.lr_check == ()
  runs = shapes.plan_sweep(spec)
  assert {r.config.data.seq_len for r in runs} == {64}
  assert {r.budget for r in runs} == {3e11, 1e12} and all(r.kind == "isoflop" for r in runs)
  assert {r.shape.d_model for r in runs} <= {16, 24, 32, 48, 64, 96, 128}
  for r in runs:
    assert r.config.train.warmup_steps <= max(3, 0.05 * r.steps)
    assert r.config.train.learning_rate == pytest.approx(1e-3 * 128 / r.shape.d_model)
  sp = chinchilla.apply_overrides(spec, {"tokenizer": "sentencepiece", "sp_vocab_size": 1000})
  assert sp.base_model.vocab_size == 1000 and sp.data.tokenizer == "sentencepiece"
  back = chinchilla.apply_overrides(sp, {"tokenizer": "byte"})
  assert back.base_model.vocab_size == shapes.BYTE_VOCAB
  with pytest.raises(ValueError, match="budgets"):
    chinchilla.apply_overrides(spec, {"budgets": ["lots"]})


@pytest.mark.parametrize("name", ["chinchilla-gpu", "moe_vs_dense-gpu-moe"])
def test_gpu_configs_build_a_model_with_the_counted_parameters(name):
  import jax
  from model import sharding
  from train.step import Trainer
  runs = shapes.plan_sweep(SPECS[name])
  run = max(runs, key=lambda r: r.params)
  trainer = Trainer(run.config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))
  n = sum(leaf.size for leaf in jax.tree.leaves(trainer.abstract_state.params))
  assert n == run.total_params == flops.param_counts(run.config.model)["total"]
