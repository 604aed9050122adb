"""The reward-model judge with a fake scorer: verdicts follow rewards, no position bias, ties,
and the infer.judge dispatch to it (no trained reward model needed)."""

import json
import types

import pytest

from infer import judge as judge_cli
from infer.eval import reward_judge


class LengthScorer:
  """Reward = the reply's length in characters; counts the replies it scored."""

  def __init__(self):
    self.calls = []

  def score(self, prompts, replies):
    assert len(prompts) == len(replies)
    self.calls.append(list(replies))
    return [float(len(r)) for r in replies]


def _candidates():
  rows_a = [{"id": str(i), "input": f"q{i}", "prediction": "x" * (i + 1)} for i in range(5)]
  rows_b = [{"id": str(i), "input": f"q{i}", "prediction": "y" * 3} for i in range(5)]
  return {"a": rows_a, "b": rows_b}


def test_pairwise_verdicts_follow_the_rewards_in_both_orders():
  scorer = LengthScorer()
  rows = reward_judge.judge_pairwise(scorer, _candidates())
  # a has lengths 1..5, b always 3: b, b, tie, a, a
  assert [r["verdict"] for r in rows] == ["b", "b", "tie", "a", "a"]
  for r in rows:
    ab, ba = r["order_ab"]["position"], r["order_ba"]["position"]
    want = {"a": ("A", "B"), "b": ("B", "A"), "tie": ("tie", "tie")}[r["verdict"]]
    assert (ab, ba) == want
    assert r["reward_a"] == len(_candidates()["a"][int(r["id"])]["prediction"])
  summary = reward_judge.judge_lib.summarize_pairwise(rows, n_samples=50)
  assert summary["position_bias"]["rate"] == 0.0
  assert summary["position_bias"]["first_position_rate"] == 0.5
  pair = summary["pairs"]["a vs b"]
  assert (pair["wins_a"], pair["wins_b"], pair["ties"], pair["unparseable"]) == (2, 2, 1, 0)
  assert pair["win_rate_a"]["value"] == 0.5
  # each distinct (question, reply) is scored once, in one call
  assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 10


def test_tie_margin_turns_close_rewards_into_ties():
  rows = reward_judge.judge_pairwise(LengthScorer(), _candidates(), tie_margin=1.5)
  assert [r["verdict"] for r in rows] == ["b", "tie", "tie", "tie", "a"]
  with pytest.raises(ValueError, match="tie_margin"):
    reward_judge.judge_pairwise(LengthScorer(), _candidates(), tie_margin=-1)


def test_pointwise_reward_is_the_score_without_criteria():
  rows, scores, config = reward_judge.run(LengthScorer(), "pointwise", _candidates(),
                                          n_samples=50)
  assert [r["score"] for r in rows[:5]] == [1.0, 2.0, 3.0, 4.0, 5.0]
  assert all(r["scores"] is None and r["error"] is None for r in rows)
  assert scores["systems"]["a"]["score"]["value"] == 3.0
  assert scores["systems"]["b"]["score"]["value"] == 3.0
  assert set(scores["systems"]["a"]) == {"unparseable", "score"}
  assert config["criteria"] is None and "per-criterion" in config["note"]


def test_a_scorer_returning_the_wrong_count_is_an_error():
  bad = types.SimpleNamespace(score=lambda prompts, replies: [0.0])
  with pytest.raises(ValueError, match="one per reply"):
    reward_judge.judge_pairwise(bad, _candidates())


def _run_dir(tmp_path, head):
  run = tmp_path / f"run_{head}"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"head": head, "model": {}}))
  return run


def test_is_reward_run(tmp_path):
  assert reward_judge.is_reward_run(str(_run_dir(tmp_path, "reward")))
  assert not reward_judge.is_reward_run(str(_run_dir(tmp_path, "lm")))
  assert not reward_judge.is_reward_run(str(tmp_path / "missing"))


@pytest.mark.parametrize("mode", ["pairwise", "pointwise"])
def test_judge_cli_dispatches_a_reward_run_to_the_reward_judge(tmp_path, monkeypatch, mode):
  paths = []
  for name, rows in _candidates().items():
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths.append(str(path))
  run = _run_dir(tmp_path, "reward")
  loaded = []
  monkeypatch.setattr(reward_judge, "load_scorer", lambda w: loaded.append(w) or LengthScorer())
  out = tmp_path / "out"
  monkeypatch.setattr(judge_cli, "FLAGS", types.SimpleNamespace(
      judge=str(run), candidates=paths, mode=mode, out=str(out), tie_margin=0.0,
      bootstrap_samples=20, seed=0, rubric=None, template=None))
  scores = judge_cli.run()
  assert loaded == [str(run)]
  rows = [json.loads(l) for l in (out / "judgements.jsonl").read_text().splitlines()]
  config = json.loads((out / "config.json").read_text())
  assert json.loads((out / "scores.json").read_text()) == json.loads(json.dumps(scores))
  assert config["judge_kind"] == "reward" and config["mode"] == mode
  if mode == "pairwise":
    assert [r["verdict"] for r in rows] == ["b", "b", "tie", "a", "a"]
    assert scores["position_bias"]["rate"] == 0.0 and config["tie_margin"] == 0.0
  else:
    assert len(rows) == 10 and all("key" in r and "score" in r for r in rows)
    assert config["criteria"] is None


@pytest.mark.parametrize("mode", ["pairwise", "pointwise"])
def test_meta_eval_reads_reward_judgements(tmp_path, monkeypatch, mode):
  from infer import meta_eval
  judged = tmp_path / "judgements.jsonl"
  rows, _, _ = reward_judge.run(LengthScorer(), mode, _candidates(), n_samples=20)
  judged.write_text("".join(json.dumps(r) + "\n" for r in rows))
  human = tmp_path / "human.jsonl"
  if mode == "pairwise":  # humans agree with the rewards: b, b, tie, a, a
    labels = ["b", "b", "tie", "a", "a"]
    human.write_text("".join(json.dumps({"id": str(i), "label": l}) + "\n"
                             for i, l in enumerate(labels)))
  else:
    human.write_text("".join(json.dumps({"id": r["id"], "system": r["system"],
                                         "label": r["score"]}) + "\n" for r in rows))
  monkeypatch.setattr(meta_eval, "FLAGS", types.SimpleNamespace(
      judgements=str(judged), human=str(human), out=str(tmp_path / "meta"), judge_system=None,
      field="score", bootstrap_samples=20, seed=0))
  scores = meta_eval.run()
  assert scores["n_paired"] == len(rows) and scores["n_unparseable"] == 0
  assert scores["percent_agreement"]["value"] == 1.0
  if mode == "pairwise":
    assert scores["bias"]["position"]["rate"] == 0.0


@pytest.mark.slow
def test_judge_cli_with_a_tiny_trained_reward_model(tiny_run, tmp_path):
  from tests.cli_runner import run_module
  rm = tmp_path / "rm"
  run_module(["train.main", "--config=experiments/reward.py:tiny", f"--workdir={rm}",
              f"--init_from={tiny_run}", "--config.train.steps=2",
              "--config.train.task_eval_examples=0"])
  paths = []
  for name, rows in _candidates().items():
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths.append(str(path))
  out = tmp_path / "judged"
  proc = run_module(["infer.judge", f"--judge={rm}", f"--candidates={','.join(paths)}",
                     "--mode=pairwise", "--bootstrap_samples=20", f"--out={out}"])
  rows = [json.loads(l) for l in (out / "judgements.jsonl").read_text().splitlines()]
  scores = json.loads((out / "scores.json").read_text())
  assert len(rows) == 5 and scores["unparseable"] == 0 and "position bias rate 0.0" in proc.stdout
  for r in rows:
    want = "a" if r["reward_a"] > r["reward_b"] else "b" if r["reward_b"] > r["reward_a"] else "tie"
    assert r["verdict"] == want
