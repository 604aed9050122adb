"""The robustness eval set: deterministic, answers kept valid, prompts changed, skips as
documented, and the infer.evaluate wiring (--write_set, suite rows)."""

import json
import types

import pytest

from infer import evaluate as evaluate_cli
from infer.eval import data as data_lib
from infer.eval import robustness, tasks

N = 6


@pytest.fixture(scope="module")
def rows():
  return robustness.eval_set(N, seed=3)


def test_generation_is_deterministic(rows):
  assert robustness.eval_set(N, seed=3) == rows
  assert robustness.eval_set(N, seed=4) != rows
  assert len({r["id"] for r in rows}) == len(rows)


def test_every_perturbation_keeps_the_reference_answer_valid(rows):
  for r in rows:
    assert tasks.score(r["task"], r["reference"], r["reference"]) == 1.0
    # the answer is the one the task gives for the original prompt
    original = [ex for ex in tasks.examples(r["task"], "heldout", N, 3)
                if ex["prompt"] == r["metadata"]["original"]]
    assert len(original) == 1 and original[0]["answer"] == r["reference"]


def test_perturbations_change_the_prompt(rows):
  for r in rows:
    changed = r["input"] != r["metadata"]["original"]
    assert changed == (r["slice"] != "original"), r


def test_skipped_pairs_are_exactly_the_documented_ones(rows):
  present = {(r["task"], r["slice"]) for r in rows}
  every = {(t, p) for t in tasks.TASK_NAMES for p in robustness.PERTURBATIONS}
  assert every - present == set(robustness.SKIPPED)
  assert set(robustness.SKIPPED) == (
      {("case", "upper"), ("stdlib", "upper"), ("units", "upper")}
      | {(t, "numbers_as_words") for t in ("reverse", "case", "count", "sort", "stdlib")})
  assert robustness.perturb("case", "Uppercase: abc", "upper") is None
  with pytest.raises(ValueError, match="choose from"):
    robustness.perturb("case", "Uppercase: abc", "shout")


def test_perturbation_texts():
  assert robustness.perturb("arithmetic", "What is 7 + 42?", "numbers_as_words") == (
      "What is seven + forty-two?")
  assert robustness.perturb("units", "Convert 5000 g to kg.", "numbers_as_words") == (
      "Convert five thousand g to kg.")
  assert robustness.perturb("sort", "Sort: 3 1", "extra_spaces") == "Sort:  3  1"
  assert robustness.perturb("count", "How many 'a' in aba?", "upper") == "HOW MANY 'A' IN ABA?"
  assert robustness.perturb("reverse", "Reverse: ab", "trailing_instruction") == (
      "Reverse: ab\nAnswer briefly.")
  assert [robustness.number_words(n) for n in (0, 19, 20, 101, 48000)] == [
      "zero", "nineteen", "twenty", "one hundred one", "forty-eight thousand"]


def test_suite_rows_slice_by_perturbation_and_task():
  rows = robustness.suite_rows(2, task_names=["arithmetic"])
  assert {r["slices"][0] for r in rows} == {f"slice={p}" for p in robustness.PERTURBATIONS}
  assert all(r["slices"][1] == "task=arithmetic" and r["metadata"]["task"] == "arithmetic"
             and r["messages"][-1]["role"] == "user" for r in rows)


def test_write_set_cli_writes_an_eval_set_that_reads_back(tmp_path, monkeypatch):
  path = tmp_path / "robust.jsonl"
  monkeypatch.setattr(evaluate_cli, "FLAGS", types.SimpleNamespace(
      write_set=str(path), suite="robustness", n_per_task=2, seed=0, tasks=["case", "units"]))
  assert evaluate_cli.run() == {"n": 14}  # case: 2 x 3 perturbations, units: 2 x 4
  written = [json.loads(l) for l in path.read_text().splitlines()]
  assert written == robustness.eval_set(2, 0, ["case", "units"])
  back = data_lib.read_eval_set(str(path))
  assert "slice=upper" not in {s for r in back if r["metadata"]["task"] == "case"
                               for s in r["slices"]}
  assert {"slice=numbers_as_words", "task=units"} <= {s for r in back for s in r["slices"]}
  monkeypatch.setattr(evaluate_cli, "FLAGS", types.SimpleNamespace(
      write_set=str(path), suite="tasks", n_per_task=2, seed=0, tasks=[]))
  with pytest.raises(ValueError, match="--suite=robustness"):
    evaluate_cli.run()


@pytest.mark.slow
def test_evaluate_robustness_suite_scores_each_perturbation(tiny_run, tmp_path):
  from tests.cli_runner import run_module
  out = tmp_path / "robust"
  run_module(["infer.evaluate", f"--workdir={tiny_run}", "--suite=robustness",
              "--n_per_task=2", "--tasks=arithmetic,case", "--max_new_tokens=4",
              "--bootstrap_samples=20", f"--out={out}"])
  scores = json.loads((out / "scores.json").read_text())
  config = json.loads((out / "config.json").read_text())
  assert config["suite"]["name"] == "robustness" and scores["n"] == 2 * 5 + 2 * 3
  for name in robustness.PERTURBATIONS:
    assert scores["slices"][f"slice={name}"]["task_score"]["n"] == (4 if name in (
        "original", "extra_spaces", "trailing_instruction") else 2)
  assert "slice=upper/task=case" not in scores["slices"]
