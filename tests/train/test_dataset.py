"""Tests for train/dataset.py: token caches and stateless, process-sliced batches."""

import os

import numpy as np
import pytest

from train import dataset as dataset_lib
from train import token_shards
from train import tokenizer as tokenizer_lib
from train.config import DataConfig
from train.token_shards import ShardedTokens

SEQ = 8


def _arange_ds(n_tokens=8 * 40 + 1, seq_len=SEQ):
  # Token value == position, so each row's first input names its window.
  return dataset_lib.TokenDataset(np.arange(n_tokens, dtype=np.uint16), seq_len)


def _windows(batch):
  return (batch["inputs"][:, 0] // SEQ).tolist()


def test_batch_is_pure_and_shifted():
  ds = _arange_ds()
  assert (ds.n_windows, ds.tokens_per_epoch) == (40, 320)
  a = ds.batch(seed=3, step=5, batch_size=4)
  b = _arange_ds().batch(seed=3, step=5, batch_size=4)  # a fresh object: no hidden state
  assert a["inputs"].shape == a["targets"].shape == (4, SEQ)
  assert a["inputs"].dtype == a["targets"].dtype == np.int32
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  np.testing.assert_array_equal(a["targets"], a["inputs"] + 1)
  np.testing.assert_array_equal(a["inputs"] % SEQ, np.tile(np.arange(SEQ), (4, 1)))
  assert _windows(ds.batch(3, 6, 4)) != _windows(a)
  assert _windows(ds.batch(4, 5, 4)) != _windows(a)
  ds.batch(3, 100, 4)
  np.testing.assert_array_equal(ds.batch(3, 5, 4)["inputs"], a["inputs"])  # call order irrelevant


def test_targets_are_next_tokens_on_random_data():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 300, size=1000).astype(np.uint16)
  ds = dataset_lib.TokenDataset(tokens, 16)
  batch = ds.batch(0, 2, 8)
  for row_in, row_t in zip(batch["inputs"], batch["targets"]):
    starts = [s for s in range(0, 1000 - 16, 16) if np.array_equal(tokens[s:s + 16], row_in)]
    assert starts and np.array_equal(tokens[starts[0] + 1:starts[0] + 17], row_t)


@pytest.mark.parametrize("count", [2, 4, 8])
def test_process_slices_tile_global_batch(count):
  ds = _arange_ds()
  full = ds.batch(7, 3, 8)
  parts = [ds.batch(7, 3, 8, process_index=i, process_count=count) for i in range(count)]
  assert all(p["inputs"].shape == (8 // count, SEQ) for p in parts)
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])
  with pytest.raises(ValueError, match="divisible"):
    ds.batch(7, 3, 6, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="process_index"):
    ds.batch(7, 3, 8, process_index=count, process_count=count)


def test_epochs_visit_every_window_once():
  ds = _arange_ds()
  for epoch in range(2):
    steps = range(epoch * 10, epoch * 10 + 10)
    seen = [w for step in steps for w in _windows(ds.batch(1, step, 4))]
    assert sorted(seen) == list(range(40))
  epoch0 = [w for s in range(10) for w in _windows(ds.batch(1, s, 4))]
  epoch1 = [w for s in range(10, 20) for w in _windows(ds.batch(1, s, 4))]
  assert epoch0 != epoch1
  # A batch that straddles epochs: 40 windows, batch 6 -> step 6 holds items 36..41.
  seen = [w for s in range(6) for w in _windows(ds.batch(2, s, 6))]
  seen += _windows(ds.batch(2, 6, 6))[:4]
  assert sorted(seen) == list(range(40))
  assert ds.epochs_at(10, 4) == 1.0 and ds.epochs_at(5, 4) == 0.5


def test_eval_batches_fixed_and_contiguous():
  ds = _arange_ds()
  batches = ds.eval_batches(4, 3)
  assert [_windows(b) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
  again = _arange_ds().eval_batches(4, 3)
  assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(batches, again))
  halves = [ds.eval_batches(4, 3, process_index=i, process_count=2) for i in range(2)]
  for j in range(3):
    np.testing.assert_array_equal(
        np.concatenate([halves[0][j]["targets"], halves[1][j]["targets"]]), batches[j]["targets"])
  assert len(ds.eval_batches(4, 100)) == 10 and len(ds.eval_batches(4)) == 10


def test_too_few_tokens_error():
  with pytest.raises(ValueError, match=r"has 5 tokens.*seq_len"):
    dataset_lib.TokenDataset(np.arange(5), SEQ)
  ds = _arange_ds(n_tokens=3 * SEQ + 1)
  with pytest.raises(ValueError, match=r"25 tokens \(3 windows.*needs 33 tokens.*batch_size"):
    ds.batch(0, 0, 4)
  with pytest.raises(ValueError, match="1-D integer"):
    dataset_lib.TokenDataset(np.zeros((4, 4)), SEQ)


def test_tokenize_documents_joins_with_eos():
  tok = tokenizer_lib.ByteTokenizer()
  docs = ["ab", "", "é"] + ["x" * 700_000] * 2  # spans two encode chunks
  got = dataset_lib.tokenize_documents(tok, docs)
  want = [97, 98, 258, 258, 0xC3, 0xA9, 258] + ([120] * 700_000 + [258]) * 2
  assert got.dtype == np.uint16
  np.testing.assert_array_equal(got, want)
  assert dataset_lib.token_dtype(65536) == np.uint16 and dataset_lib.token_dtype(65537) == np.uint32


def _write_corpus(tmp_path, n_docs=30):
  data = tmp_path / "data"
  data.mkdir()
  for i in range(n_docs):
    (data / f"doc{i:02d}.txt").write_text(
        "".join(f"def function_{i}_{j}(x):\n    return x + {j}\n\n" for j in range(20)))
  return str(data)


def test_build_datasets_byte_end_to_end_and_cached(tmp_path, monkeypatch):
  cfg = DataConfig(data=_write_corpus(tmp_path), tokenizer="byte", seq_len=32, val_fraction=0.1,
                   cache_dir=str(tmp_path / "cache"))
  tok, train_ds, val_ds, info = dataset_lib.build_datasets(cfg, batch_size=8)
  assert info["n_documents"] == 30
  assert (info["n_train_documents"], info["n_val_documents"]) == (27, 3)
  assert info["n_train_tokens"] + info["n_val_tokens"] == info["n_bytes"] + 30  # + eos per doc
  assert isinstance(train_ds.tokens, ShardedTokens) and train_ds.tokens.dtype == np.uint16
  assert info["tokenizer"]["kind"] == "byte" and info["val_windows"] == val_ds.n_windows
  # The two streams decode back to exactly the corpus documents, disjointly.
  docs = [open(os.path.join(cfg.data, f)).read() for f in sorted(os.listdir(cfg.data))]
  streams = [np.asarray(ds.tokens).tolist() for ds in (train_ds, val_ds)]
  decoded = [[tok.decode(part) for part in _split_on(s, tok.eos_id)] for s in streams]
  assert sorted(decoded[0] + decoded[1]) == sorted(docs) and not set(decoded[0]) & set(decoded[1])
  files = os.listdir(info["tokens_dir"])
  assert sorted(files) == ["meta.json", "train-00000.bin", "val-00000.bin"]

  def no_tokenizing(*a, **k):
    raise AssertionError("re-tokenized despite a cache")
  monkeypatch.setattr(token_shards, "write_token_shards", no_tokenizing)
  _, train2, _, info2 = dataset_lib.build_datasets(cfg)
  assert info2 == info
  np.testing.assert_array_equal(train2.batch(0, 3, 8)["inputs"], train_ds.batch(0, 3, 8)["inputs"])
  with pytest.raises(ValueError, match="batch_size"):
    dataset_lib.build_datasets(cfg, batch_size=10_000)


def _split_on(stream, eos):
  parts, cur = [], []
  for t in stream:
    if t == eos:
      parts.append(cur)
      cur = []
    else:
      cur.append(t)
  assert not cur  # every document ends with eos
  return parts


def test_interrupted_write_leaves_no_cache(tmp_path, monkeypatch):
  cfg = DataConfig(data=_write_corpus(tmp_path), tokenizer="byte", seq_len=32, val_fraction=0.1,
                   cache_dir=str(tmp_path / "cache"))
  real_write = token_shards.ShardWriter.write
  calls = []

  def failing_write(self, tokens):
    calls.append(1)
    if self.prefix == "val":
      self._open()  # pylint: disable=protected-access
      self._file.write(b"partial")  # pylint: disable=protected-access
      raise KeyboardInterrupt
    real_write(self, tokens)
  monkeypatch.setattr(token_shards.ShardWriter, "write", failing_write)
  with pytest.raises(KeyboardInterrupt):
    dataset_lib.build_datasets(cfg)
  (entry,) = os.listdir(tmp_path / "cache" / "tokens")
  # the finished train shard only: no partial val shard, no meta.json
  assert os.listdir(tmp_path / "cache" / "tokens" / entry) == ["train-00000.bin"]
  monkeypatch.undo()
  _, train_ds, val_ds, info = dataset_lib.build_datasets(cfg)
  assert val_ds.n_tokens == info["n_val_tokens"] > 0


def test_build_datasets_sentencepiece(tmp_path):
  cfg = DataConfig(data=_write_corpus(tmp_path), sp_vocab_size=320, seq_len=16,
                   cache_dir=str(tmp_path / "cache"))
  tok, train_ds, val_ds, info = dataset_lib.build_datasets(cfg)
  assert info["tokenizer"]["kind"] == "sentencepiece" and tok.vocab_size == 320
  assert info["val_bytes_per_token"] > 1.3
  text = tok.decode(val_ds.eval_batches(1, 1)[0]["inputs"][0])
  assert len(text) > 16 and "def function_" in tok.decode(np.asarray(val_ds.tokens))


@pytest.mark.slow
def test_default_corpus_full_pipeline(tmp_path):
  cfg = DataConfig(cache_dir=str(tmp_path))
  tok, train_ds, val_ds, info = dataset_lib.build_datasets(cfg, batch_size=64)
  assert tok.vocab_size == 2048 and info["n_train_tokens"] > 1_000_000
  assert info["n_val_tokens"] > 10_000 and 2.0 < info["val_bytes_per_token"] < 5.0
