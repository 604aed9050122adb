"""Tests for train/corpus.py: default and user corpora, fingerprints, the train/val split."""

import json
import os

import pytest

from train import corpus as corpus_lib
from train.config import DataConfig


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return str(path)


@pytest.fixture(scope="module")
def stdlib_corpus():
  return corpus_lib.load_stdlib_corpus()


def test_default_corpus_found_and_nonempty(stdlib_corpus):
  c = stdlib_corpus
  assert c.name.startswith("stdlib:python-")
  assert c.n_documents == len(c.documents) > 100
  assert c.n_bytes == sum(len(d.encode("utf-8")) for d in c.documents) > 1_000_000
  assert all(c.documents)
  rels = [rel for rel, _ in corpus_lib.stdlib_files()]
  assert rels == sorted(rels)
  assert "os.py" in rels and "json/decoder.py" in rels
  for rel in rels:
    parts = rel.split("/")
    assert not {"test", "tests", "idle_test", "site-packages"} & set(parts[:-1]), rel


def test_default_corpus_via_config_and_cap(stdlib_corpus):
  capped = corpus_lib.load_corpus(DataConfig(max_corpus_bytes=100_000))
  again = corpus_lib.load_corpus(DataConfig(max_corpus_bytes=100_000))
  assert capped.fingerprint == again.fingerprint != stdlib_corpus.fingerprint
  assert list(capped.documents) == list(stdlib_corpus.documents[:capped.n_documents])
  last = len(capped.documents[-1].encode("utf-8"))
  assert capped.n_bytes >= 100_000 > capped.n_bytes - last


def test_user_fingerprint_stable_and_content_sensitive(tmp_path):
  _write(tmp_path / "a.txt", "alpha\n")
  _write(tmp_path / "b.txt", "beta\n")
  first = corpus_lib.load_user_corpus(str(tmp_path))
  assert first.fingerprint == corpus_lib.load_user_corpus(str(tmp_path)).fingerprint
  assert list(first.documents) == ["alpha\n", "beta\n"] and first.n_bytes == 11
  _write(tmp_path / "b.txt", "beta!\n")
  assert corpus_lib.load_user_corpus(str(tmp_path)).fingerprint != first.fingerprint
  # Document boundaries count: "ab" + "c" differs from "a" + "bc".
  x = corpus_lib._fingerprint([("", "ab"), ("", "c")])
  assert x != corpus_lib._fingerprint([("", "a"), ("", "bc")])


def test_sources_file_glob_dir_list_jsonl(tmp_path):
  a = _write(tmp_path / "d" / "a.txt", "file a")
  _write(tmp_path / "d" / "sub" / "b.md", "file b")
  _write(tmp_path / "d" / "sub" / "skip.py", "not collected")
  with open(tmp_path / "d" / "c.jsonl", "w") as f:
    f.write(json.dumps({"text": "j1", "id": 1}) + "\n\n" + json.dumps({"text": "j2"}) + "\n")
  assert list(corpus_lib.load_user_corpus(a).documents) == ["file a"]
  by_dir = corpus_lib.load_user_corpus(str(tmp_path / "d"))
  assert list(by_dir.documents) == ["file a", "j1", "j2", "file b"]
  by_glob = corpus_lib.load_user_corpus(str(tmp_path / "d" / "**" / "*.md"))
  assert list(by_glob.documents) == ["file b"]
  spec = f"{a}, {tmp_path / 'd' / '*.txt'},{tmp_path / 'd' / 'c.jsonl'}"
  both = corpus_lib.load_user_corpus(spec)
  assert list(both.documents) == ["file a", "j1", "j2"]  # a.txt listed twice, read once
  with open(tmp_path / "e.jsonl", "w") as f:
    f.write(json.dumps({"body": "custom field"}) + "\n")
  cfg = DataConfig(data=str(tmp_path / "e.jsonl"), jsonl_field="body")
  assert list(corpus_lib.load_corpus(cfg).documents) == ["custom field"]


def test_source_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.data.data"):
    corpus_lib.load_user_corpus(str(tmp_path / "missing.txt"))
  with pytest.raises(FileNotFoundError, match="no data files"):
    corpus_lib.load_user_corpus(str(tmp_path / "*.txt"))
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"content": "x"}) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: no field 'text'.*jsonl_field"):
    corpus_lib.load_user_corpus(str(bad))
  bad.write_text("{not json\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:1: not a JSON object"):
    corpus_lib.load_user_corpus(str(bad))
  _write(tmp_path / "empty" / "e.txt", "")
  with pytest.raises(ValueError, match="empty"):
    corpus_lib.load_user_corpus(str(tmp_path / "empty"))
  latin = tmp_path / "latin.txt"
  latin.write_bytes("caf\xe9".encode("latin-1"))
  with pytest.raises(ValueError, match="not valid UTF-8"):
    corpus_lib.load_user_corpus(str(latin))


def _corpus(n):
  docs = [f"document {i}\n" for i in range(n)]
  return corpus_lib.Corpus(docs, "t", corpus_lib._fingerprint(("", d) for d in docs), n,
                           sum(map(len, docs)))


@pytest.mark.parametrize("n,fraction", [(2, 0.02), (50, 0.1), (730, 0.02)])
def test_split_disjoint_deterministic(n, fraction):
  c = _corpus(n)
  train, val = corpus_lib.split_corpus(c, fraction)
  assert not set(train) & set(val)
  assert sorted(train + val) == sorted(c.documents)
  assert len(val) == min(n - 1, max(1, round(n * fraction)))
  assert (train, val) == corpus_lib.split_corpus(c, fraction)
  assert train == [d for d in c.documents if d in set(train)]  # corpus order kept


def test_split_single_document_and_bad_fraction():
  text = "".join(f"line {i}\n" for i in range(100))
  c = corpus_lib.Corpus([text], "one", "f", 1, len(text))
  (train,), (val,) = corpus_lib.split_corpus(c, 0.1)
  assert train + val == text and val.startswith("line ") and train.endswith("\n")
  assert 0.05 < len(val) / len(text) < 0.15
  for bad in (0.0, 1.0, -0.5):
    with pytest.raises(ValueError, match="val_fraction"):
      corpus_lib.split_corpus(_corpus(10), bad)


def test_resolve_cache_dir(monkeypatch, tmp_path):
  monkeypatch.delenv("JAXLM_CACHE", raising=False)
  assert corpus_lib.resolve_cache_dir(DataConfig()).endswith(os.path.join(".cache", "jaxlm"))
  monkeypatch.setenv("JAXLM_CACHE", str(tmp_path / "env"))
  assert corpus_lib.resolve_cache_dir(DataConfig()) == str(tmp_path / "env")
  explicit = DataConfig(cache_dir=str(tmp_path / "c"))
  assert corpus_lib.resolve_cache_dir(explicit) == str(tmp_path / "c")
  assert corpus_lib.resolve_cache_dir(DataConfig(), str(tmp_path / "arg")) == str(tmp_path / "arg")
