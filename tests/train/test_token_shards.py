"""Parallel, streaming tokenization into shards: the same bytes as one process, bounded memory,
shards read back as one array, and one build per shared cache across hosts."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from model.tokenizer import ByteTokenizer, SentencePieceTokenizer
from train import corpus as corpus_lib
from train import dataset as dataset_lib
from train import shared_cache
from train import token_shards
from train.config import DataConfig


def _shard_bytes(directory, meta):
  return {split: [open(os.path.join(directory, s["file"]), "rb").read()
                  for s in meta["shards"][split]] for split in ("train", "val")}


def _build(corpus, tokenizer, cache, workers, shard_tokens):
  directory, meta = dataset_lib.build_token_files(corpus, tokenizer, 0.05, str(cache), workers,
                                                  shard_tokens)
  return directory, meta, _shard_bytes(directory, meta)


def test_embedded_corpus_two_workers_give_the_single_process_bytes(tmp_path):
  corpus = corpus_lib.load_stdlib_corpus(max_bytes=3_000_000)
  tok = ByteTokenizer()
  one_dir, one_meta, one = _build(corpus, tok, tmp_path / "one", 1, 1 << 20)
  two_dir, two_meta, two = _build(corpus, tok, tmp_path / "two", 2, 1 << 20)
  assert (one_meta["workers"], two_meta["workers"]) == (1, 2)
  assert len(one["train"]) >= 3 and one == two  # several shards, byte for byte
  assert one_meta["stream_sha256"] == two_meta["stream_sha256"]
  # ... and the stream is what the in-memory single-process tokenizer gives.
  train_docs, val_docs = corpus_lib.split_corpus(corpus, 0.05)
  want = dataset_lib.tokenize_documents(tok, train_docs)
  np.testing.assert_array_equal(np.asarray(dataset_lib.split_tokens(two_dir, two_meta, "train")),
                                want)
  assert b"".join(two["train"]) == want.astype("<u2").tobytes()


def test_multi_file_sentencepiece_corpus_two_workers_same_bytes(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  for i in range(6):
    (data / f"part{i}.txt").write_text("".join(f"def f_{i}_{j}(x):\n  return x * {j}\n\n"
                                               for j in range(400)))
  with open(data / "more.jsonl", "w") as f:
    for i in range(300):
      f.write(json.dumps({"text": f"row {i}: caf\u00e9 \u2581 naïve {i * i}"}) + "\n")
  corpus = corpus_lib.load_user_corpus(str(data))
  tok = SentencePieceTokenizer.train(list(corpus.documents), vocab_size=300)
  _, meta1, one = _build(corpus, tok, tmp_path / "one", 1, 4096)
  _, meta2, two = _build(corpus, tok, tmp_path / "two", 2, 4096)
  assert one == two and meta1["n_train_documents"] + meta1["n_val_documents"] == 306
  train_docs, _ = corpus_lib.split_corpus(corpus, 0.05)
  chunked = token_shards.encode_stream(tok, train_docs, workers=2, chunk_chars=2000)
  np.testing.assert_array_equal(np.concatenate(list(chunked)),
                                dataset_lib.tokenize_documents(tok, train_docs))


def test_stream_checksum_is_the_old_train_npy_checksum(tmp_path):
  """Runs trained on a format-2 cache (one train.npy) keep their data identity."""
  corpus = corpus_lib.load_stdlib_corpus(max_bytes=200_000)
  tok = ByteTokenizer()
  directory, meta = dataset_lib.build_token_files(corpus, tok, 0.1, str(tmp_path), 1, 5000)
  assert len(meta["shards"]["train"]) > 10
  tokens = np.asarray(dataset_lib.split_tokens(directory, meta, "train"))
  np.save(tmp_path / "train.npy", tokens)
  assert dataset_lib.split_checksum(meta, "train") == dataset_lib.file_checksum(
      str(tmp_path / "train.npy"))["sha256"]


def test_sharded_tokens_read_as_one_array(tmp_path):
  stream = np.random.default_rng(0).integers(0, 60000, 10_007).astype(np.uint16)
  writer = token_shards.ShardWriter(str(tmp_path), "t", np.uint16, shard_tokens=1000)
  for piece in np.array_split(stream, 7):
    writer.write(piece)
  shards = writer.close()
  assert [s["tokens"] for s in shards] == [1000] * 10 + [7]
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary files left
  tokens = token_shards.ShardedTokens([str(tmp_path / s["file"]) for s in shards], np.uint16)
  assert len(tokens) == tokens.size == 10_007 and tokens.ndim == 1
  rng = np.random.default_rng(1)
  for _ in range(200):
    a, b = sorted(rng.integers(0, 10_008, 2))
    np.testing.assert_array_equal(tokens[a:b], stream[a:b])
  np.testing.assert_array_equal(tokens[9990:], stream[9990:])
  ds = dataset_lib.TokenDataset(tokens, 64)
  np.testing.assert_array_equal(ds.batch(0, 3, 8)["inputs"],
                                dataset_lib.TokenDataset(stream, 64).batch(0, 3, 8)["inputs"])
  with pytest.raises(TypeError, match="contiguous slices"):
    tokens[::2]  # pylint: disable=pointless-statement


def test_user_documents_stream_and_split_like_the_in_memory_corpus(tmp_path):
  with open(tmp_path / "c.jsonl", "w") as f:
    for i in range(500):
      f.write(json.dumps({"text": f"document {i} " * (i % 7 + 1)}) + "\n")
  corpus = corpus_lib.load_user_corpus(str(tmp_path / "c.jsonl"))
  assert isinstance(corpus.documents, corpus_lib.UserDocuments) and len(corpus.documents) == 500
  train, val = corpus_lib.split_views(corpus, 0.1)
  want_train, want_val = corpus_lib.split_corpus(corpus, 0.1)
  assert (list(train), list(val)) == (want_train, want_val) and len(want_val) == 50
  order = corpus_lib.document_order(corpus)  # the documented rule: last 10% of the hash order
  assert sorted(order[-50:]) == sorted(corpus_lib.validation_indices(corpus, 0.1))
  capped = corpus_lib.load_user_corpus(str(tmp_path / "c.jsonl"), max_bytes=300)
  assert capped.n_bytes >= 300 and capped.n_documents == len(list(capped.documents)) < 500


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from model.tokenizer import ByteTokenizer
    from train import corpus as corpus_lib
    from train import dataset as dataset_lib

    if __name__ == "__main__":
      path, cache, megabytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
      line = json.dumps({"text": "x = [i * i for i in range(10)]  # squares\\n" * 40}) + "\\n"
      with open(path, "w") as f:
        for _ in range(megabytes * 2**20 // len(line)):
          f.write(line)
      corpus = corpus_lib.load_user_corpus(path)
      before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
      _, meta = dataset_lib.build_token_files(corpus, ByteTokenizer(), 0.01, cache, workers=2,
                                              shard_tokens=1 << 22)
      print(json.dumps(dict(
          parent_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, before_kb=before,
          children_kb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
          tokens=meta["n_train_tokens"] + meta["n_val_tokens"])))
""")


def test_memory_does_not_grow_with_the_corpus(tmp_path):
  """Peak memory of the tokenizing parent and its workers at 4 MB and 32 MB of text: the
  same within 24 MB (holding the 32 MB corpus or its tokens would add > 100 MB)."""
  script = tmp_path / "tokenize_memory.py"
  script.write_text(_MEMORY_SCRIPT)
  results = {}
  for mb in (4, 32):
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / f"c{mb}.jsonl"), str(tmp_path / f"k{mb}"),
         str(mb)], capture_output=True, text=True, check=True, timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        env=dict(os.environ, PYTHONPATH=os.getcwd()))
    results[mb] = json.loads(out.stdout.strip().splitlines()[-1])
  assert results[32]["tokens"] > 7 * results[4]["tokens"]
  grow_parent = (results[32]["parent_kb"] - results[4]["parent_kb"]) / 1024
  grow_children = (results[32]["children_kb"] - results[4]["children_kb"]) / 1024
  assert grow_parent < 24 and grow_children < 24, results


# -- one build per shared cache ------------------------------------------------------------

class _Hosts:
  """Stands in for jax's process functions and multihost_utils' collectives."""

  def __init__(self, monkeypatch, index, count=2, seen_by_others=True):
    monkeypatch.setattr(shared_cache.jax, "process_count", lambda: count)
    monkeypatch.setattr(shared_cache.jax, "process_index", lambda: index)
    mh = shared_cache.multihost_utils
    monkeypatch.setattr(mh, "broadcast_one_to_all", lambda x: np.array(12345))
    monkeypatch.setattr(mh, "sync_global_devices", lambda name: None)
    monkeypatch.setattr(mh, "process_allgather",
                        lambda x: np.array([bool(x)] + [seen_by_others] * (count - 1)))


def test_host_zero_builds_a_shared_cache_and_notes_its_failure(tmp_path, monkeypatch):
  _Hosts(monkeypatch, index=0)
  directory = str(tmp_path / "tokens" / "entry")
  assert shared_cache.build_once(directory, lambda: "built", lambda: False) == "built"
  assert not os.listdir(tmp_path / "tokens")  # the probe file is removed

  def failing():
    raise OSError("No space left on device")
  with pytest.raises(OSError):
    shared_cache.build_once(directory, failing, lambda: False)
  note = open(os.path.join(directory, shared_cache.FAILURE_FILE)).read()
  assert "No space left" in note


def test_other_hosts_wait_for_host_zero_then_load(tmp_path, monkeypatch):
  directory = tmp_path / "tokens" / "entry"
  directory.mkdir(parents=True)
  (tmp_path / "tokens" / f".host-probe-{12345:x}").write_text("probe")  # host 0's
  _Hosts(monkeypatch, index=1)
  monkeypatch.setattr(shared_cache, "_POLL_SECONDS", 0.01)
  polls = []

  def complete():
    polls.append(1)
    return len(polls) > 3  # host 0 finishes while we wait
  built = []
  assert shared_cache.build_once(str(directory), lambda: built.append(len(polls)) or "loaded",
                                 complete) == "loaded"
  assert built == [4]  # loaded only once the entry was complete
  (directory / shared_cache.FAILURE_FILE).write_text("OSError: disk full")
  with pytest.raises(RuntimeError, match="host 0 failed.*disk full"):
    shared_cache.build_once(str(directory), lambda: "never", lambda: False)
  (directory / shared_cache.FAILURE_FILE).unlink()
  with pytest.raises(TimeoutError, match="cache_dir not on shared storage"):
    shared_cache.build_once(str(directory), lambda: "never", lambda: False, timeout_s=0.05)


def test_unshared_caches_are_built_on_every_host(tmp_path, monkeypatch):
  _Hosts(monkeypatch, index=1, seen_by_others=False)  # host 1 can't see host 0's probe
  assert shared_cache.build_once(str(tmp_path / "tokens" / "e"), lambda: "own copy",
                                 lambda: False) == "own copy"


def test_tokenize_workers_flag_is_checked():
  with pytest.raises(ValueError, match="tokenize_workers must be >= 0"):
    DataConfig(tokenize_workers=-1)


def test_a_corpus_changed_while_read_is_refused(tmp_path):
  (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n"
                                            for i in range(40)))
  corpus = corpus_lib.load_user_corpus(str(tmp_path / "a.jsonl"))
  with open(tmp_path / "a.jsonl", "a") as f:
    f.write(json.dumps({"text": "appended after the fingerprint"}) + "\n")
  with pytest.raises(RuntimeError, match="changed while it was read"):
    dataset_lib.build_token_files(corpus, ByteTokenizer(), 0.1, str(tmp_path / "cache"))
  entry = os.listdir(tmp_path / "cache" / "tokens")[0]
  assert "meta.json" not in os.listdir(tmp_path / "cache" / "tokens" / entry)
