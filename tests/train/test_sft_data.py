"""SFT data: jsonl errors, loss weights, packing, stateless batches and the dataset builder."""

import json

import numpy as np
import pytest

from model import chat
from model.tokenizer import ByteTokenizer
from train.data import packing, sft, tasks

TOK = ByteTokenizer()
QA = chat.get_template("qa")
GOOD = {"prompt": "What is 2 + 2?", "response": "4", "task": "arithmetic", "answer": 4}


def _write(tmp_path, lines, name="my.jsonl"):
  path = tmp_path / name
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def _encoded(n=60, seed=0):
  rows = tasks.mixture("train", n // len(tasks.TASK_NAMES) + 1, seed)[:n]
  return [sft.encode_example(TOK, QA, row) for row in rows]


# ---- reading jsonl

def test_read_jsonl_accepts_both_forms_and_keeps_task_and_answer(tmp_path):
  messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello"}]
  path = _write(tmp_path, [json.dumps(GOOD), "", json.dumps({"messages": messages, "id": 7})])
  rows = sft.read_jsonl(path)
  assert len(rows) == 2
  assert rows[0]["task"] == "arithmetic" and rows[0]["answer"] == "4"
  assert rows[0]["messages"] == [{"role": "user", "content": "What is 2 + 2?"},
                                 {"role": "assistant", "content": "4"}]
  assert rows[1]["messages"] == messages and rows[1]["id"] == 7
  assert sft.reference_answer(rows[1]) == "Hello"
  assert sft.prompt_text(QA, rows[0]) == "Q: What is 2 + 2?\nA: "


@pytest.mark.parametrize("bad_line, match", [
    ('{"prompt": "x", "response": ', r"line 3 of .*my\.jsonl: invalid JSON"),
    ('{"prompt": "x"}', r"line 3 of .*my\.jsonl: expected an object with 'prompt' and "
                        r"'response' or 'messages'.*got keys \['prompt'\]"),
    ('["prompt", "response"]', r"line 3 of .*: expected an object.*got \["),
    ('{"prompt": "x", "response": 5}', r"line 3 of .*: 'response' must be a string"),
    ('{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}',
     r"line 3 of .*: message 0 has role 'assistant' where 'user' was expected"),
    ('{"messages": [{"role": "user", "content": "a"}]}',
     r"line 3 of .*: the last message must be from the assistant"),
    ('{"prompt": "x", "response": "y", "answer": [1]}', r"line 3 of .*: 'answer' must be"),
])
def test_read_jsonl_errors_name_file_and_line(tmp_path, bad_line, match):
  path = _write(tmp_path, [json.dumps(GOOD), "", bad_line, json.dumps(GOOD)])
  with pytest.raises(ValueError, match=match):
    sft.read_jsonl(path)


def test_read_jsonl_empty_or_missing_file(tmp_path):
  with pytest.raises(ValueError, match="has no rows; add lines like"):
    sft.read_jsonl(_write(tmp_path, ["", "  "]))
  with pytest.raises(FileNotFoundError, match="no such file"):
    sft.read_jsonl(str(tmp_path / "absent.jsonl"))


# ---- encoding

@pytest.mark.parametrize("name", sorted(chat.TEMPLATES))
def test_only_the_response_and_eos_carry_weight(name):
  template = chat.get_template(name)
  row = {"prompt": "Reverse: gokoza", "response": "azokog"}
  tokens, weights = sft.encode_example(TOK, template, row)
  assert tokens.dtype == np.int32 and weights.dtype == np.float32 and tokens.shape == weights.shape
  assert set(np.unique(weights)) == {0.0, 1.0}
  prompt_ids = chat.encode_prompt(TOK, template, chat.prompt_messages(row["prompt"]))
  n_prompt = len(prompt_ids)
  assert tokens[:n_prompt].tolist() == prompt_ids and not weights[:n_prompt].any()
  assert weights[n_prompt:].all()
  assert tokens[-1] == TOK.eos_id and tokens[0] == TOK.bos_id
  assert TOK.decode(tokens[weights > 0]) == "azokog" + template.turn_suffix


def test_multi_turn_weights_every_assistant_reply():
  row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "BB"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "DD"}]}
  tokens, weights = sft.encode_example(TOK, QA, row)
  assert TOK.decode(tokens[weights > 0]) == "BB\nDD\n"
  assert TOK.decode(tokens[weights == 0]) == "Q: a\nA: Q: c\nA: "


# ---- packing

def _shifted(encoded):
  return sorted((t[:-1].tobytes(), t[1:].tobytes(), w[1:].tobytes()) for t, w in encoded)


def _segments(rows):
  return sorted((s["inputs"].tobytes(), s["targets"].tobytes(), s["weights"].tobytes())
                for s in packing.unpack(rows))


def test_pack_keeps_every_example_intact_and_matches_padding():
  encoded, seq_len = _encoded(), 128
  assert max(t.size for t, _ in encoded) <= seq_len + 1
  packed, stats = packing.pack(encoded, seq_len, pad_id=TOK.pad_id)
  padded, pad_stats = packing.pad_rows(encoded, seq_len, pad_id=TOK.pad_id)
  assert _segments(packed) == _shifted(encoded) == _segments(padded)
  assert stats["truncated"] == stats["dropped"] == 0
  assert packed["inputs"].shape[0] < len(encoded) == padded["inputs"].shape[0]
  assert stats["efficiency"] > 2 * pad_stats["efficiency"]
  assert stats["target_tokens"] == sum(float(w[1:].sum()) for _, w in encoded)
  for key in packing.ROW_KEYS:
    assert packed[key].shape == (stats["rows"], seq_len)
    assert packed[key].dtype == (np.float32 if key == "weights" else np.int32)


def test_pack_positions_restart_and_padding_has_no_weight():
  packed, _ = packing.pack(_encoded(), 64, pad_id=TOK.pad_id)
  seg, pos = packed["segment_ids"], packed["positions"]
  assert (seg.max(axis=1) >= 2).any()
  for r in range(seg.shape[0]):
    ids = seg[r][seg[r] > 0]
    assert ids.tolist() == sorted(ids.tolist()) and ids[0] == 1  # 1, 2, ... then padding
    for s in np.unique(ids):
      assert pos[r][seg[r] == s].tolist() == list(range(int((seg[r] == s).sum())))
  pad = seg == 0
  assert pad.any() and not packed["weights"][pad].any() and not pos[pad].any()
  assert (packed["inputs"][pad] == TOK.pad_id).all()


def test_pack_is_deterministic():
  a, stats_a = packing.pack(_encoded(), 48)
  b, stats_b = packing.pack(_encoded(), 48)
  assert stats_a == stats_b
  for key in packing.ROW_KEYS:
    np.testing.assert_array_equal(a[key], b[key])


def test_long_examples_are_truncated_at_the_end_or_dropped():
  long_response = sft.encode_example(TOK, QA, {"prompt": "p", "response": "x" * 50})
  long_prompt = sft.encode_example(TOK, QA, {"prompt": "p" * 50, "response": "x"})
  packed, stats = packing.pack([long_response, long_prompt], seq_len=16)
  assert stats["truncated"] == 2 and stats["dropped"] == 1 and stats["rows"] == 1
  tokens, weights = long_response
  np.testing.assert_array_equal(packed["inputs"][0], tokens[:16])
  np.testing.assert_array_equal(packed["weights"][0], weights[1:17])


# ---- dataset

def _dataset(n=60, seq_len=48):
  rows, _ = packing.pack(_encoded(n), seq_len)
  return sft.SftDataset(rows, name="train")


def test_batch_is_a_pure_function_of_seed_and_step():
  ds = _dataset()
  a, b = ds.batch(0, 3, 4), ds.batch(0, 3, 4)
  assert set(a) == set(packing.ROW_KEYS)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["inputs"], ds.batch(0, 4, 4)["inputs"])
  assert not np.array_equal(a["inputs"], ds.batch(1, 3, 4)["inputs"])


def test_process_slices_concatenate_to_the_global_batch():
  ds = _dataset()
  whole = ds.batch(5, 2, 8)
  parts = [ds.batch(5, 2, 8, process_index=p, process_count=4) for p in range(4)]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_an_epoch_visits_every_row_once():
  ds = _dataset()
  seen = np.concatenate([ds.batch(0, s, 1)["inputs"] for s in range(ds.n_windows)])
  assert sorted(r.tobytes() for r in seen) == sorted(r.tobytes() for r in ds.rows["inputs"])
  assert not np.array_equal(seen, ds.rows["inputs"])  # shuffled
  evals = ds.eval_batches(4, n_batches=2)
  assert len(evals) == 2
  np.testing.assert_array_equal(evals[1]["targets"], ds.rows["targets"][4:8])


def test_dataset_errors_name_the_fix():
  ds = _dataset(n=10, seq_len=1024)
  with pytest.raises(ValueError, match="has 1 rows.*lower --config.train.batch_size"):
    ds.check_batch_size(2)
  with pytest.raises(ValueError, match="missing \\['positions'\\]"):
    sft.SftDataset({k: v for k, v in ds.rows.items() if k != "positions"})
  empty, _ = packing.pack([], 16)
  with pytest.raises(ValueError, match="has no rows"):
    sft.SftDataset(empty)


def test_build_from_embedded_tasks():
  train, val, heldout, info = sft.build_sft_datasets(
      TOK, "qa", 128, n_train_per_task=40, n_heldout_per_task=3, seed=0)
  assert json.loads(json.dumps(info)) == info
  assert info["source"] == "tasks" and info["n_train_examples"] == 40 * len(tasks.TASK_NAMES)
  assert info["n_heldout"] == len(heldout) == 3 * len(tasks.TASK_NAMES)
  assert info["truncated"] == info["dropped"] == 0 and 0.5 < info["packing_efficiency"] <= 1
  assert train.n_windows == info["train_rows"] and val.n_windows == info["val_rows"] > 0
  assert all(tasks.split_of(r["task"], r["prompt"]) == "heldout" for r in heldout)
  assert train.batch(0, 0, 2)["inputs"].shape == (2, 128)


def test_build_from_jsonl_splits_deterministically(tmp_path):
  rows = [{"prompt": f"Q{i}", "response": f"A{i}"} for i in range(40)]
  path = _write(tmp_path, [json.dumps(r) for r in rows])
  train, val, heldout, info = sft.build_sft_datasets(TOK, "plain", 64, data_path=path, pack=False)
  assert info["n_val_examples"] == len(heldout) == 2 and info["n_train_examples"] == 38
  assert train.n_windows == 38 and val.n_windows == 2
  again = sft.build_sft_datasets(TOK, "plain", 64, data_path=path, pack=False)[2]
  assert [r["prompt"] for r in heldout] == [r["prompt"] for r in again]
  val_prompts = {r["prompt"] for r in heldout}
  train_text = {TOK.decode(r) for r in train.rows["inputs"]}
  assert not any(f"\n{p}\n" in t for p in val_prompts for t in train_text)


def test_a_validation_split_smaller_than_a_batch_is_padded_with_zero_weight_rows():
  from train.data.sft import SftDataset
  rows = {k: np.ones((3, 8), np.float32 if k == "weights" else np.int32)
          for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
  (batch,) = SftDataset(rows, "val").eval_batches(batch_size=8)
  assert batch["inputs"].shape == (8, 8)
  assert batch["weights"][:3].sum() == 24 and batch["weights"][3:].sum() == 0
  halves = [SftDataset(rows, "val").eval_batches(8, process_index=i, process_count=2)[0]
            for i in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h["weights"] for h in halves]), batch["weights"])
