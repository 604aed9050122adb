"""The judge with scripted fakes: both orders, position bias, parsing, unparseable answers."""

import os

import pytest

from infer.eval import judge

RUBRIC = judge.read_rubric(os.path.join(judge.RUBRICS_DIR, "helpfulness.md"))
PAIRWISE = judge.read_template(os.path.join(judge.RUBRICS_DIR, "pairwise.md"),
                               judge.PAIRWISE_FIELDS)
POINTWISE = judge.read_template(os.path.join(judge.RUBRICS_DIR, "pointwise.md"),
                                judge.POINTWISE_FIELDS)


def _candidates():
  rows_a = [{"id": str(i), "input": f"q{i}", "prediction": "long answer " * (i + 2)}
            for i in range(6)]
  rows_b = [{"id": str(i), "input": f"q{i}", "prediction": "short"} for i in range(6)]
  return {"a": rows_a, "b": rows_b}


def _answer(prompt: str, which: str) -> str:
  return prompt.split(f"Answer {which}:\n", 1)[1].split("\n\n", 1)[0]


def test_default_rubric_parses():
  assert [c for c, _ in RUBRIC.criteria] == ["correctness", "relevance", "clarity"]
  assert [v for v, _ in RUBRIC.scale] == [1, 2, 3, 4, 5]


def test_a_judge_always_preferring_the_first_position_is_fully_biased_and_a_tie():
  rows = judge.judge_pairwise(lambda ps: ["Looks fine.\nVerdict: A"] * len(ps), PAIRWISE, RUBRIC,
                              _candidates())
  assert len(rows) == 6 and all(r["verdict"] == "tie" for r in rows)
  summary = judge.summarize_pairwise(rows, n_samples=100)
  assert summary["position_bias"]["rate"] == 1.0
  assert summary["position_bias"]["first_position_rate"] == 1.0
  pair = summary["pairs"]["a vs b"]
  assert pair["ties"] == 6 and pair["win_rate_a"]["value"] == 0.5 and pair["unparseable"] == 0


def test_a_consistent_judge_has_no_position_bias_and_verdicts_map_back():
  def longer(prompts):
    return ["Verdict: " + ("A" if len(_answer(p, "A")) > len(_answer(p, "B")) else "B")
            for p in prompts]
  rows = judge.judge_pairwise(longer, PAIRWISE, RUBRIC, _candidates())
  assert [r["verdict"] for r in rows] == ["a"] * 6
  assert [r["order_ba"]["position"] for r in rows] == ["B"] * 6
  summary = judge.summarize_pairwise(rows, n_samples=100)
  assert summary["position_bias"]["rate"] == 0.0
  assert summary["pairs"]["a vs b"]["win_rate_a"]["value"] == 1.0
  assert summary["length_bias"]["longer_wins_rate"] == 1.0


def test_unparseable_answers_are_counted_not_guessed():
  outputs = iter(["I like A more", "Verdict: B", "Verdict: A\nVerdict: B", "Verdict: tie"] * 3)
  rows = judge.judge_pairwise(lambda ps: [next(outputs) for _ in ps], PAIRWISE, RUBRIC,
                              _candidates())
  summary = judge.summarize_pairwise(rows, n_samples=50)
  assert summary["unparseable"] == 6 and summary["unparseable_single_order"] == 6
  assert summary["pairs"]["a vs b"]["win_rate_a"]["n"] == 0
  assert rows[1]["order_ab"]["error"].startswith("conflicting")


@pytest.mark.parametrize("text,scores", [
    ("correctness: 4\nRelevance: 5\n**clarity**: 3\nRationale: ok", {"correctness": 4,
                                                                     "relevance": 5,
                                                                     "clarity": 3}),
    ("correctness: 4\nrelevance: 5", None),            # a criterion missing
    ("correctness: 9\nrelevance: 5\nclarity: 3", None),  # off the scale
    ("correctness: 2\ncorrectness: 4\nrelevance: 5\nclarity: 3", None),  # conflicting
])
def test_pointwise_parsing(text, scores):
  got, _, error = judge.parse_pointwise(text, RUBRIC)
  assert got == scores and (error is None) == (scores is not None)


def test_pointwise_judging_with_a_fake():
  fake = lambda ps: ["correctness: 5\nrelevance: 4\nclarity: 3\nRationale: fine"
                     if "long" in p else "no idea" for p in ps]
  rows = judge.judge_pointwise(fake, POINTWISE, RUBRIC, _candidates())
  summary = judge.summarize_pointwise(rows, RUBRIC, n_samples=50)
  assert summary["systems"]["a"]["score"]["value"] == 4.0
  assert summary["systems"]["a"]["correctness"]["value"] == 5.0
  assert summary["systems"]["b"]["unparseable"] == 6 and summary["unparseable"] == 6
  assert rows[0]["rationale"] == "fine"


def test_templates_and_rubrics_name_what_is_missing(tmp_path):
  bad = tmp_path / "t.md"
  bad.write_text("Question: {question}\n")
  with pytest.raises(ValueError, match="lacks placeholder"):
    judge.read_template(str(bad), judge.PAIRWISE_FIELDS)
  bad.write_text("# R\n## Criteria\n- ok: fine\n")
  with pytest.raises(ValueError, match="Scale"):
    judge.read_rubric(str(bad))
  assert judge.fill("{answer} {x}", {"answer": "{x}", "x": "y"}) == "{x} y"
