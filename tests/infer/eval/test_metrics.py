"""Metrics against sacrebleu / rouge-score's own APIs and hand values; bootstrap; processing."""

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from infer.eval import bootstrap, data, metrics

# sacrebleu's documented example (its README): BLEU 48.53, chrF2 59.73.
SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
REFS = [["The dog bit the man.", "The dog had bit the man."],
        ["It was not unexpected.", "No one was surprised."],
        ["The man bit him first.", "The man had bitten the dog."]]
ALL = np.arange(3)


def test_bleu_and_chrf_equal_sacrebleu_and_the_published_example():
  streams = [list(s) for s in zip(*REFS)]
  prepared = metrics.prepare(["bleu", "chrf"], SYS, REFS)
  assert prepared["bleu"].value(ALL) == sacrebleu.corpus_bleu(SYS, streams).score
  assert prepared["chrf"].value(ALL) == sacrebleu.corpus_chrf(SYS, streams).score
  assert round(prepared["bleu"].value(ALL), 2) == 48.53
  assert round(prepared["chrf"].value(ALL), 2) == 59.73
  assert "nrefs:2" in prepared["bleu"].signature


def test_corpus_metrics_are_recomputed_on_a_resample():
  idx = np.array([2, 2, 0])
  prepared = metrics.prepare(["bleu", "chrf"], SYS, REFS)
  hyps, refs = [SYS[i] for i in idx], [[REFS[i][k] for i in idx] for k in range(2)]
  assert prepared["bleu"].value(idx) == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score)
  assert prepared["chrf"].value(idx) == pytest.approx(sacrebleu.corpus_chrf(hyps, refs).score)


def test_variable_reference_counts():
  preds, refs = ["a cat sat", "the dog ran home"], [["a cat sat"], ["a dog ran home", "dog home"]]
  got = metrics.prepare(["bleu"], preds, refs)["bleu"].value(np.arange(2))
  want = sacrebleu.corpus_bleu(preds, [["a cat sat", "a dog ran home"], [None, "dog home"]])
  assert got == want.score


def test_rouge_equals_rouge_score():
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  prepared = metrics.prepare(["rouge"], SYS, REFS)
  assert list(prepared) == ["rouge1", "rouge2", "rougeL"]
  for name, p in prepared.items():
    want = [scorer.score_multi(r, s)[name].fmeasure for s, r in zip(SYS, REFS)]
    assert p.per_example.tolist() == pytest.approx(want)
    assert p.value(ALL) == pytest.approx(np.mean(want))
  single = scorer.score("The man bit him first.", SYS[2])["rouge1"].fmeasure
  assert single < prepared["rouge1"].per_example[2]  # the best of two references counts


@pytest.mark.parametrize("pred,refs,em,f1", [
    ("The Cat.", ["cat"], 1.0, 1.0),                     # case, article, punctuation
    ("cat sat mat", ["the cat sat on mat"], 0.0, 6 / 7),  # P 3/3, R 3/4
    ("", ["the"], 1.0, 1.0),                              # both empty after normalisation
    ("", ["cat"], 0.0, 0.0),
    ("dog", ["cat", "a dog"], 1.0, 1.0),                  # best over references
    ("cat cat", ["cat"], 0.0, 2 / 3),                     # counts clip: P 1/2, R 1
])
def test_exact_match_and_f1_edge_cases(pred, refs, em, f1):
  assert metrics.exact_match(pred, refs) == em
  assert metrics.token_f1(pred, refs) == pytest.approx(f1)


def test_diversity_and_length_by_hand():
  preds = ["a b a b a", "c"]
  prepared = metrics.prepare(["distinct", "repetition", "length"], preds, [[""], [""]])
  assert prepared["distinct1"].value(np.arange(2)) == pytest.approx(3 / 6)
  assert prepared["distinct2"].value(np.arange(2)) == pytest.approx(2 / 4)
  assert metrics.repetition("a b c a b c d e", n=2) == pytest.approx(2 / 7)
  assert prepared["repetition"].per_example.tolist() == [0.0, 0.0]  # fewer than 4 tokens
  assert prepared["length"].value(np.arange(2)) == 3.0


def test_unknown_metric_names_the_choices():
  with pytest.raises(ValueError, match="choose from"):
    metrics.parse_metrics("exact,blue")


def test_bootstrap_is_seeded_and_brackets_the_mean():
  values = np.random.default_rng(0).random(50)
  fn = lambda idx: float(values[idx].mean())
  a, b = bootstrap.interval(fn, 50, 300, seed=1), bootstrap.interval(fn, 50, 300, seed=1)
  assert a == b and a["low"] < a["value"] < a["high"]
  assert a != bootstrap.interval(fn, 50, 300, seed=2)
  const = bootstrap.interval(lambda idx: 1.0, 5, 50)
  assert const["low"] == const["high"] == 1.0


def test_bootstrap_counts_undefined_resamples():
  out = bootstrap.interval(lambda idx: float("nan") if len(set(idx)) == 1 else 1.0, 2, 200)
  assert out["undefined_resamples"] > 0 and out["value"] == 1.0


def test_paired_comparison():
  a = np.ones(40)
  b = np.r_[np.zeros(20), np.ones(20)]
  same = bootstrap.paired(lambda i: a[i].mean(), lambda i: a[i].mean(), 40, 200)
  assert same["difference"] == same["low"] == same["high"] == 0.0
  better = bootstrap.paired(lambda i: a[i].mean(), lambda i: b[i].mean(), 40, 200)
  assert better["difference"] == 0.5 and 0 < better["low"] <= 0.5 <= better["high"]
  assert better["p_value"] < 0.05


def test_processing_steps_are_named_and_versioned():
  assert data.parse_steps("strip,first_line@1") == ["strip@1", "first_line@1"]
  assert data.apply_steps(data.parse_steps("first_line,extract_number"),
                          "  It is 1,200 or 1,234.5 \nmore") == "1234.5"
  with pytest.raises(ValueError, match="unknown processing step 'strip@9'"):
    data.parse_steps("strip@9")


def test_bad_jsonl_names_file_and_line(tmp_path):
  path = tmp_path / "e.jsonl"
  path.write_text('{"id": 1, "input": "q", "reference": "a"}\n\n{"id": 2, "input": \n')
  with pytest.raises(ValueError, match=rf"line 3 of {path}: invalid JSON"):
    data.read_eval_set(str(path))
  path.write_text('{"id": 1, "input": "q"}\n')
  with pytest.raises(ValueError, match=rf"line 1 of {path}: add 'reference'"):
    data.read_eval_set(str(path))
  path.write_text('{"id": 1, "prediction": "x", "reference": "a"}\n'
                  '{"id": 1, "prediction": "y", "reference": "a"}\n')
  with pytest.raises(ValueError, match=rf"line 2 of {path}: duplicate id"):
    data.read_predictions(str(path))


def test_slices_from_top_level_and_metadata(tmp_path):
  path = tmp_path / "e.jsonl"
  path.write_text('{"id": "x", "messages": [{"role": "user", "content": "hi"}], "reference": "a",'
                  ' "slice": ["easy", "short"], "metadata": {"task": "greet"}}\n')
  row = data.read_eval_set(str(path))[0]
  assert row["slices"] == ["slice=easy", "slice=short", "task=greet"]
  assert row["messages"] == [{"role": "user", "content": "hi"}]
