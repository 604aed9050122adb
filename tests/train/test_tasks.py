"""Embedded instruction tasks: determinism, disjoint splits, answers and scoring."""

import hashlib
import json

import pytest

from train.data import tasks

# Pinned on Python 3.11 / numpy 2: a change means the data set differs across machines.
STDLIB_DIGEST = "ff8c53de3781b1aa8d20c0149dd82f28832d7496ac457a2e081331cebb8aaaad"
MIXTURE_DIGEST = "2287d513becd833cef3c593f5fa62d2871cce3b47be84078598a4c01897ae2e2"


def _digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("task", tasks.TASK_NAMES)
def test_deterministic_and_prefix_stable(task):
  first = tasks.examples(task, "train", 60, seed=3)
  assert first == tasks.examples(task, "train", 60, seed=3)
  assert tasks.examples(task, "train", 25, seed=3) == first[:25]
  assert first != tasks.examples(task, "train", 60, seed=4)


def test_pinned_digests_same_on_every_machine():
  assert len(tasks.TASK_NAMES) >= 6
  assert _digest(tasks.stdlib_questions()) == STDLIB_DIGEST, (
      "the stdlib questions changed on this Python: drop the functions whose signatures differ "
      "from STDLIB_FUNCTIONS (or re-pin if the change is intended)")
  rows = tasks.mixture("train", 20, seed=0) + tasks.mixture("heldout", 5, seed=0)
  assert _digest(rows) == MIXTURE_DIGEST


@pytest.mark.parametrize("task", tasks.TASK_NAMES)
def test_train_and_heldout_are_disjoint(task):
  train = {r["prompt"] for seed in (0, 1) for r in tasks.examples(task, "train", 400, seed)}
  heldout = [r["prompt"] for r in tasks.examples(task, "heldout", 100, seed=0)]
  assert heldout and len(set(heldout)) == len(heldout)
  assert not train & set(heldout)
  assert all(tasks.split_of(task, p) == "heldout" for p in heldout)


@pytest.mark.parametrize("task", tasks.TASK_NAMES)
def test_every_answer_scores_one_against_its_response(task):
  rows = tasks.examples(task, "train", 300) + tasks.examples(task, "heldout", 60)
  for row in rows:
    assert set(row) == {"task", "prompt", "response", "answer"} and row["task"] == task
    assert tasks.score(task, row["response"], row["answer"]) == 1.0, row
    assert len(row["prompt"]) <= 80 and 0 < len(row["answer"]) <= 20, row


@pytest.mark.parametrize("task, prediction, answer, expected", [
    ("arithmetic", " 42 \nand more", "42", 1.0),
    ("arithmetic", "42.0", "42", 1.0),
    ("arithmetic", "43", "42", 0.0),
    ("arithmetic", "4 2", "42", 0.0),
    ("arithmetic", "", "0", 0.0),
    ("units", "1,000.", "1000", 1.0),
    ("count", "'3'", "3", 1.0),
    ("count", "three", "3", 0.0),
    ("reverse", "  AZOKOG\n", "azokog", 1.0),
    ("reverse", "azokgo", "azokog", 0.0),
    ("case", "KOTAMI", "KOTAMI", 1.0),
    ("case", "kotami", "KOTAMI", 0.0),
    ("sort", "[1, 2,  5]", "1 2 5", 1.0),
    ("sort", "1 5 2", "1 2 5", 0.0),
    ("sort", "1 2", "1 2 5", 0.0),
    ("stdlib", "`Textwrap`.", "textwrap", 1.0),
    ("stdlib", "json", "textwrap", 0.0),
    ("my_jsonl_task", " Paris.\n", "Paris", 1.0),
    ("my_jsonl_task", "paris", "Paris", 0.0),
])
def test_score_normalises_noise_and_rejects_wrong_answers(task, prediction, answer, expected):
  assert tasks.score(task, prediction, answer) == expected


def test_stdlib_answers_come_from_the_library():
  questions = dict(tasks.stdlib_questions())
  assert questions["Which module defines `dedent`?"] == "textwrap"
  assert questions["How many parameters does `json.dumps` take?"] == "11"
  assert questions["What is the first parameter of `re.sub`?"] == "pattern"
  assert questions["What is the default of `width` in `textwrap.wrap`?"] == "70"
  assert "Which module defines `escape`?" not in questions  # html, re and glob all have one


def test_finite_tasks_repeat_train_and_shorten_heldout():
  heldout = tasks.examples("units", "heldout", 10_000)
  assert 0 < len(heldout) < 10_000 and len({r["prompt"] for r in heldout}) == len(heldout)
  train = tasks.examples("stdlib", "train", 2_000)
  assert len(train) == 2_000 and len({r["prompt"] for r in train}) < 2_000


def test_mixture_and_errors(tmp_path):
  rows = tasks.mixture("train", 5, seed=1)
  assert len(rows) == 5 * len(tasks.TASK_NAMES)
  assert {r["task"] for r in rows} == set(tasks.TASK_NAMES)
  assert rows == tasks.mixture("train", 5, seed=1)
  path = tmp_path / "sub" / "rows.jsonl"
  tasks.write_jsonl(str(path), rows)
  assert [json.loads(line) for line in path.read_text().splitlines()] == rows
  with pytest.raises(ValueError, match="unknown task 'nope'; choose from"):
    tasks.examples("nope", "train", 1)
  with pytest.raises(ValueError, match="unknown split 'test'"):
    tasks.examples("sort", "test", 1)
