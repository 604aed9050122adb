"""The runner on a tiny trained model: batch-size invariance, perplexity vs a direct forward
pass, bits per byte by hand, and a rerun from the recorded config."""

import json
import math

import jax
import numpy as np
import pytest

from infer.eval import data, runner
from infer.loading import load_model
from model.transformer import Transformer


@pytest.fixture(scope="module")
def loaded(tiny_run):
  return load_model(str(tiny_run))


def test_generation_is_identical_at_batch_1_and_8(loaded):
  rows = data.suite_rows(2, seed=0, task_names=("arithmetic", "reverse", "units"))
  config = runner.GenerationConfig(max_new_tokens=6, batch_size=8, template="qa")
  one = runner.generate(loaded, rows, runner.GenerationConfig(
      max_new_tokens=6, batch_size=1, template="qa"))
  eight = runner.generate(loaded, rows, config)
  assert len(one) == len(eight) == 6
  assert [r["raw_prediction"] for r in one] == [r["raw_prediction"] for r in eight]
  assert any(r["raw_prediction"] for r in one)
  assert all(r["n_tokens"] <= 6 for r in one)


def test_windows_predict_every_token_once():
  ids = list(range(20))
  wins = runner.windows(ids, 8)
  assert [w[0] for w in wins] == [0, 7, 14] and wins[-1][-1] == 19
  assert sum(len(w) - 1 for w in wins) == len(ids) - 1
  assert runner.windows([5], 8) == []


def test_perplexity_equals_a_direct_forward_pass(loaded, text_file):
  text = text_file.read_text()[:300] + "é ü"  # non-ASCII: bytes != characters
  docs = [("doc", text)]
  rows = runner.perplexity(loaded, docs, batch_size=8)
  assert rows == runner.perplexity(loaded, docs, batch_size=1)
  tok = loaded.tokenizer
  ids = [tok.bos_id] + tok.encode(text)
  apply = jax.jit(Transformer(loaded.model_config, loaded.peft).apply)
  nats = 0.0
  for w in runner.windows(ids, loaded.model_config.max_len):
    logits_BLV, _ = apply({"params": loaded.params}, np.asarray([w], np.int32))
    logits_LV = np.asarray(logits_BLV[0], np.float64)
    top_L1 = logits_LV.max(-1, keepdims=True)
    logp_LV = logits_LV - top_L1 - np.log(np.exp(logits_LV - top_L1).sum(-1, keepdims=True))
    nats -= sum(logp_LV[i, w[i + 1]] for i in range(len(w) - 1))
  assert sum(r["nats"] for r in rows) == pytest.approx(nats, rel=1e-5)
  assert sum(r["tokens"] for r in rows) == len(ids) - 1
  assert sum(r["bytes"] for r in rows) == len(text.encode("utf-8")) == len(text) + 2
  values = runner.perplexity_values(rows)
  idx = np.arange(len(rows))
  loss = nats / (len(ids) - 1)
  assert values["perplexity"](idx) == pytest.approx(math.exp(loss), rel=1e-5)
  assert values["bits_per_byte"](idx) == pytest.approx(
      loss / math.log(2) * (len(ids) - 1) / len(text.encode("utf-8")), rel=1e-5)


def test_bits_per_byte_by_hand():
  # two windows of one 12-byte document: 6 nats over 6 tokens -> loss 1 nat per token;
  # bits per byte = 6 / ln 2 / 12 = loss / ln 2 * tokens / bytes
  rows = [dict(document="d", window=0, nats=2.0, tokens=2, bytes=12),
          dict(document="d", window=1, nats=4.0, tokens=4, bytes=0)]
  values = runner.perplexity_values(rows)
  idx = np.arange(2)
  assert values["loss"](idx) == 1.0
  assert values["perplexity"](idx) == pytest.approx(math.e)
  assert values["bits_per_byte"](idx) == pytest.approx(1.0 / math.log(2) * 6 / 12)


def test_rerun_from_recorded_config_reproduces_scores(tiny_run, tmp_path):
  from infer import evaluate
  config = dict(mode="suite", metrics=["task_score", "exact", "chrf"], slice_by=["task"],
                bootstrap=dict(samples=50, seed=0), workdir=str(tiny_run), step=None,
                suite=dict(name="tasks", n_per_task=2, seed=0, tasks=["reverse", "case"],
                           split="heldout"),
                generation=runner.GenerationConfig(max_new_tokens=5, template="auto:qa",
                                                   post=("strip@1",)).to_dict())
  scores, examples, recorded = evaluate.evaluate(config)
  assert recorded["step"] == 2 and recorded["generation"]["template"] == "qa"
  assert set(scores["slices"]) == {"task=reverse", "task=case"}
  again, examples_again, _ = evaluate.evaluate(json.loads(json.dumps(recorded)))
  assert again == scores and examples_again == examples


def test_eval_set_mode_with_messages_slices_and_steps(tiny_run, tmp_path):
  from infer import evaluate
  path = tmp_path / "eval.jsonl"
  rows = [{"id": "a", "input": "  What is 2 + 2?  ", "reference": "4", "slice": "math"},
          {"id": "b", "messages": [{"role": "user", "content": "Reverse: abc"}],
           "references": ["cba", "c b a"], "metadata": {"task": "reverse"}}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = dict(mode="data", data=str(path), metrics=["exact", "f1", "bleu", "rouge1"],
                slice_by=["slice", "task"], bootstrap=dict(samples=20, seed=0),
                workdir=str(tiny_run), step=None,
                generation=runner.GenerationConfig(
                    max_new_tokens=4, template="qa", pre=("strip@1",),
                    post=("first_line@1", "extract_number@1")).to_dict())
  scores, examples, recorded = evaluate.evaluate(config)
  assert set(scores["slices"]) == {"slice=math", "task=reverse"}
  assert [e["input"] for e in examples] == ["  What is 2 + 2?  ", "Reverse: abc"]
  for e in examples:  # post-processing applied, raw output kept beside it
    assert e["prediction"] == data.apply_steps(["first_line@1", "extract_number@1"],
                                               e["raw_prediction"])
  path.write_text(path.read_text().replace("cba", "abc"))
  with pytest.raises(ValueError, match="changed since the recorded evaluation"):
    evaluate.evaluate(recorded)
