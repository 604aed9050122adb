"""Preference pairs: embedded pairs (deterministic, right vs wrong), jsonl forms and their
errors, encoding into chosen / rejected rows, batching."""

import json

import numpy as np
import pytest

from model.chat import get_template
from model.tokenizer import ByteTokenizer
from train.data import preference
from train.data import tasks as tasks_lib

TOKENIZER = ByteTokenizer()
TEMPLATE = get_template("qa")


def test_embedded_pairs_are_deterministic_and_chosen_is_right_rejected_wrong():
  pairs = preference.embedded_pairs("train", 12, seed=3)
  assert pairs == preference.embedded_pairs("train", 12, seed=3)
  assert pairs != preference.embedded_pairs("train", 12, seed=4)
  assert len(pairs) == 12 * len(tasks_lib.TASK_NAMES)
  for p in pairs:
    assert tasks_lib.score(p["task"], p["chosen"], p["answer"]) == 1.0
    assert tasks_lib.score(p["task"], p["rejected"], p["answer"]) == 0.0, p
    assert p["chosen"] != p["rejected"]
  kinds = {p["kind"] for p in pairs}
  assert {"off_by_one", "wrong_case", "other_answer"} <= kinds and len(kinds) >= 6


def test_heldout_pairs_never_share_a_prompt_with_training_pairs():
  def prompts(split):
    return {p["messages"][0]["content"] for p in preference.embedded_pairs(split, 30)}
  assert not prompts("train") & prompts("heldout")


def test_the_three_jsonl_forms(tmp_path):
  path = tmp_path / "pairs.jsonl"
  chat_ctx = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}]
  rows = [
      {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5", "margin": 2},
      {"messages": chat_ctx, "chosen": "4", "rejected": "22"},
      {"chosen": chat_ctx + [{"role": "assistant", "content": "4"}],
       "rejected": chat_ctx + [{"role": "assistant", "content": "five"}]},
  ]
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  got = preference.read_jsonl(str(path))
  assert [g["chosen"] for g in got] == ["4", "4", "4"]
  assert [g["rejected"] for g in got] == ["5", "22", "five"]
  assert got[0]["margin"] == 2.0 and got[1]["margin"] == 0.0
  assert got[1]["context"] == chat_ctx == got[2]["context"]


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "a", "chosen": "b"', "invalid JSON"),
    ('{"prompt": "a", "chosen": "b"}', "'chosen' and 'rejected'"),
    ('{"prompt": "a", "chosen": "b", "rejected": "b"}', "the same text"),
    ('{"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], '
     '"rejected": [{"role": "user", "content": "z"}, {"role": "assistant", "content": "w"}]}',
     "share its context"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}', "'margin'"),
])
def test_malformed_lines_name_the_file_and_line(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"prompt": "ok", "chosen": "1", "rejected": "2"}\n' + line + "\n")
  with pytest.raises(ValueError, match=f"line 2 of {path}") as info:
    preference.read_jsonl(str(path))
  assert message in str(info.value)


def test_encoded_pairs_weight_only_the_replies_and_share_the_prompt():
  pairs = [preference.normalize_pair({"prompt": "What is 2 + 2?", "chosen": "4",
                                      "rejected": "five"})]
  rows, stats = preference.encode_pairs(TOKENIZER, TEMPLATE, pairs, seq_len=48)
  assert stats["kept"] == 1
  for side, reply in (("chosen", "4"), ("rejected", "five")):
    weights, targets = rows[f"{side}_weights"][0], rows[f"{side}_targets"][0]
    text = TOKENIZER.decode([t for t, w in zip(targets, weights) if w > 0])
    assert text.startswith(reply)  # the reply (+ turn suffix), then eos (not text)
    assert targets[weights > 0][-1] == TOKENIZER.eos_id
  first_c = int(np.argmax(rows["chosen_weights"][0] > 0))
  first_r = int(np.argmax(rows["rejected_weights"][0] > 0))
  assert first_c == first_r > 5
  np.testing.assert_array_equal(rows["chosen_inputs"][0, :first_c + 1],
                                rows["rejected_inputs"][0, :first_r + 1])


def test_pairs_whose_reply_does_not_fit_are_dropped_together():
  pairs = [preference.normalize_pair({"prompt": "p" * 40, "chosen": "a", "rejected": "b"}),
           preference.normalize_pair({"prompt": "q", "chosen": "a", "rejected": "b"})]
  rows, stats = preference.encode_pairs(TOKENIZER, TEMPLATE, pairs, seq_len=30)
  assert stats["dropped"] == 1 and rows["chosen_inputs"].shape == rows["rejected_inputs"].shape
  assert rows["chosen_inputs"].shape[0] == 1 and rows["margin"].shape == (1, 1)


def test_batches_are_pure_functions_of_seed_and_step():
  train_ds, val_ds, heldout, info = preference.build_preference_datasets(
      TOKENIZER, "qa", 64, n_train_per_task=10, n_heldout_per_task=2)
  batch = train_ds.batch(0, 3, 8)
  assert set(batch) == set(preference.ROW_KEYS)
  assert all(v.shape[0] == 8 for v in batch.values())
  for k in batch:
    np.testing.assert_array_equal(batch[k], train_ds.batch(0, 3, 8)[k])
  assert not np.array_equal(batch["chosen_inputs"], train_ds.batch(0, 4, 8)["chosen_inputs"])
  assert info["n_val_pairs"] == val_ds.n_windows > 0 and heldout
  (padded,) = val_ds.eval_batches(64)  # fewer pairs than a batch: zero-weight padding
  assert padded["chosen_weights"][val_ds.n_windows:].sum() == 0
