"""End-to-end command lines: evaluate (predictions, suite + rerun, perplexity), judge, meta_eval."""

import json

import pytest
import sacrebleu

from tests.cli_runner import run_module


def _scores(out):
  return json.loads((out / "scores.json").read_text())


@pytest.fixture(scope="module")
def suite_eval(tiny_run, tmp_path_factory):
  out = tmp_path_factory.mktemp("suite") / "eval"
  proc = run_module(["infer.evaluate", f"--workdir={tiny_run}", "--suite=tasks", "--n_per_task=2",
                     "--tasks=arithmetic,reverse,case", "--max_new_tokens=6",
                     "--bootstrap_samples=100", f"--out={out}"])
  return out, proc


@pytest.mark.slow
def test_predictions_mode_scores_any_system(tmp_path):
  preds = tmp_path / "outputs.jsonl"
  rows = [{"id": 1, "prediction": "The cat sat.", "reference": "the cat sat", "slice": "x"},
          {"id": 2, "prediction": "a dog", "references": ["one dog", "a dog ran"], "slice": "y"},
          {"id": 3, "prediction": "42", "reference": "41", "metadata": {"task": "arithmetic"}}]
  preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
  other = tmp_path / "other.jsonl"
  other.write_text("".join(json.dumps(dict(r, prediction="nothing")) + "\n" for r in rows[:2]))
  out = tmp_path / "out"
  run_module(["infer.evaluate", f"--predictions={preds}", "--metrics=exact,f1,bleu,chrf,rouge",
              f"--compare={other}", "--bootstrap_samples=200", f"--out={out}"])
  scores = _scores(out)
  for name in ("exact", "f1", "bleu", "chrf", "rouge1", "rouge2", "rougeL"):
    assert set(scores[name]) >= {"value", "low", "high"}, name
  assert scores["exact"]["value"] == pytest.approx(1 / 3)
  want = sacrebleu.corpus_bleu(["The cat sat.", "a dog", "42"],
                               [["the cat sat", "one dog", "41"], [None, "a dog ran", None]])
  assert scores["bleu"]["value"] == pytest.approx(want.score)
  assert set(scores["slices"]) == {"slice=x", "slice=y", "task=arithmetic"}
  examples = [json.loads(l) for l in (out / "examples.jsonl").read_text().splitlines()]
  assert [e["id"] for e in examples] == ["1", "2", "3"] and "f1" in examples[0]["scores"]
  paired = scores["comparison"]["exact"]  # ids 1 and 2 only: 1/2 vs 0
  assert paired["n"] == 2 and paired["difference"] == 0.5 and paired["low"] <= 0.5
  config = json.loads((out / "config.json").read_text())
  assert config["mode"] == "predictions" and len(config["data_sha256"]) == 64


@pytest.mark.slow
def test_suite_mode_and_rerun(suite_eval, tmp_path):
  out, proc = suite_eval
  scores = _scores(out)
  assert scores["n"] == 6 and set(scores["slices"]) == {
      "task=arithmetic", "task=reverse", "task=case"}
  assert 0 <= scores["task_score"]["value"] <= 1
  config = json.loads((out / "config.json").read_text())
  assert config["step"] == 2 and config["generation"]["sampler"] == "greedy"
  again = tmp_path / "again"
  run_module(["infer.evaluate", f"--rerun={out / 'config.json'}", f"--out={again}"])
  assert _scores(again) == scores
  assert (again / "examples.jsonl").read_text() == (out / "examples.jsonl").read_text()


@pytest.mark.slow
def test_perplexity_mode(tiny_run, text_file, tmp_path):
  out = tmp_path / "ppl"
  run_module(["infer.evaluate", f"--workdir={tiny_run}", "--perplexity",
              f"--data={text_file.parent}", "--bootstrap_samples=50", f"--out={out}"])
  scores = _scores(out)
  assert scores["bytes"] == len(text_file.read_bytes())
  ppl = scores["perplexity"]
  assert ppl["low"] <= ppl["value"] <= ppl["high"]
  loss = sum(json.loads(l)["nats"] for l in (out / "examples.jsonl").read_text().splitlines())
  assert scores["bits_per_byte"]["value"] == pytest.approx(loss / 0.6931471805599453 /
                                                           scores["bytes"])


@pytest.mark.slow
def test_bad_input_is_one_line_naming_file_and_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": 1, "prediction": "x", "reference": "y"}\n{"id": 2, "prediction": 3}\n')
  proc = run_module(["infer.evaluate", f"--predictions={bad}", f"--out={tmp_path / 'o'}"],
                    check=False)
  assert proc.returncode == 1
  assert f"evaluate: error: line 2 of {bad}: add 'prediction'" in proc.stderr
  assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_judge_with_a_tiny_model_reports_unparseable_then_meta_eval(suite_eval, tiny_run,
                                                                    tmp_path):
  out, _ = suite_eval
  examples = [json.loads(l) for l in (out / "examples.jsonl").read_text().splitlines()]
  gold, model = tmp_path / "gold.jsonl", tmp_path / "model.jsonl"
  gold.write_text("".join(json.dumps({"id": e["id"], "input": e["input"],
                                      "prediction": e["references"][0]}) + "\n"
                          for e in examples))
  model.write_text("".join(json.dumps({"id": e["id"], "input": e["input"],
                                       "prediction": e["prediction"]}) + "\n" for e in examples))
  judged = tmp_path / "judged"
  proc = run_module(["infer.judge", f"--judge={tiny_run}", f"--candidates={gold},{model}",
                     "--mode=pairwise", "--rubric=rubrics/helpfulness.md", "--max_new_tokens=8",
                     "--bootstrap_samples=20", f"--out={judged}"])
  scores = _scores(judged)
  rows = [json.loads(l) for l in (judged / "judgements.jsonl").read_text().splitlines()]
  assert len(rows) == 6 and scores["n"] == 6
  unparsed = sum(r["verdict"] is None for r in rows)
  assert scores["unparseable"] == unparsed and "unparseable" in proc.stdout
  for r in rows:  # a verdict exists only where both orders parsed
    parsed = r["order_ab"]["position"] is not None and r["order_ba"]["position"] is not None
    assert (r["verdict"] is not None) == parsed
  labels = tmp_path / "labels.jsonl"  # verifiable answers: the gold answer always wins
  labels.write_text("".join(json.dumps({"id": e["id"], "label": "gold"}) + "\n"
                            for e in examples))
  meta = tmp_path / "meta"
  run_module(["infer.meta_eval", f"--judgements={judged / 'judgements.jsonl'}",
              f"--human={labels}", "--judge_system=model", "--bootstrap_samples=20",
              f"--out={meta}"])
  m = _scores(meta)
  assert m["n_unparseable"] == unparsed and m["n_paired"] == 6 - unparsed
  assert "cohen_kappa" in m and "position" in m["bias"] and "self_preference" in m["bias"]
  if m["n_paired"] == 0:
    assert m["cohen_kappa"]["value"] is None and m["cohen_kappa"]["reason"]


@pytest.mark.slow
def test_meta_eval_pointwise_against_hand_labels(tmp_path):
  from infer.eval import agreement, judge
  rubric = judge.read_rubric("rubrics/helpfulness.md")
  template = "{criteria} {scale} {question} {answer}"
  cands = {"mine": [{"id": str(i), "input": "q", "prediction": "w " * i} for i in range(1, 7)],
           "other": [{"id": str(i), "input": "q", "prediction": "x"} for i in range(1, 7)]}
  scores = iter([3, 4, 5, 2, 5, 1, 2, 2, 3, 3, 1, 2])
  fake = lambda ps: ["\n".join(f"{c}: {s}" for c, _ in rubric.criteria)
                     for s in (next(scores) for _ in ps)]
  rows = judge.judge_pointwise(fake, template, rubric, cands)
  judged = tmp_path / "judgements.jsonl"
  judged.write_text("".join(json.dumps(r) + "\n" for r in rows))
  human = [4, 4, 5, 1, 5, 2, 2, 3, 3, 3, 1, 1]
  labels = tmp_path / "labels.jsonl"
  labels.write_text("".join(json.dumps({"id": r["id"], "system": r["system"], "label": h}) + "\n"
                            for r, h in zip(rows, human)))
  out = tmp_path / "meta"
  run_module(["infer.meta_eval", f"--judgements={judged}", f"--human={labels}",
              "--judge_system=mine", "--bootstrap_samples=50", f"--out={out}"])
  m = _scores(out)
  judge_scores = [3, 4, 5, 2, 5, 1, 2, 2, 3, 3, 1, 2]
  assert m["n_paired"] == 12 and m["n_unparseable"] == 0
  want = agreement.cohen_kappa(judge_scores, human, [1, 2, 3, 4, 5], "quadratic")["value"]
  assert m["weighted_kappa_quadratic"]["value"] == pytest.approx(want)
  assert m["percent_agreement"]["value"] == pytest.approx(7 / 12)
  # judge minus human: mine (-1,0,0,1,0,-1) mean -1/6; other (0,-1,0,0,0,1) mean 0
  assert m["bias"]["self_preference"]["value"] == pytest.approx(-1 / 6)
  ambiguous = tmp_path / "ambiguous.jsonl"
  ambiguous.write_text('{"id": "1", "label": 3}\n')
  proc = run_module(["infer.meta_eval", f"--judgements={judged}", f"--human={ambiguous}",
                     f"--out={tmp_path / 'm2'}"], check=False)
  assert proc.returncode == 1 and "give the human label 'system'" in proc.stderr
