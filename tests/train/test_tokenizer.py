"""Tests for model/tokenizer.py and train/tokenizer.py: byte and sentencepiece tokenizers, save/load, caching."""

import os
import sysconfig

import pytest

from train import corpus as corpus_lib
from model import tokenizer as tokenizer_lib
from train.tokenizer import get_tokenizer
from train.config import DataConfig

PYTHON_SOURCE = (
    "class A:\n"
    "    def f(self, x):\n"
    "        if x:  # two spaces before the comment\n"
    "\t\treturn {'k': [1, 22, 333]}\n"
    "\n\n"
    "        return None   \n"
    "  \n")
UNICODE = "λx → 😀 ünïcödé 中文 \u2581 \x00 \r\n"
_FILES = ("textwrap.py", "heapq.py", "bisect.py", "fnmatch.py", "shlex.py")


def _stdlib_docs():
  root = sysconfig.get_paths()["stdlib"]
  return [open(os.path.join(root, name), encoding="utf-8").read() for name in _FILES]


@pytest.fixture(scope="module")
def docs():
  return _stdlib_docs()


@pytest.fixture(scope="module")
def sp(docs):
  return tokenizer_lib.SentencePieceTokenizer.train(docs, vocab_size=512, model_type="bpe")


def test_byte_tokenizer_round_trip_and_specials():
  tok = tokenizer_lib.ByteTokenizer()
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 256, 257, 258)
  for text in (PYTHON_SOURCE, UNICODE, ""):
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
  assert tok.decode([104, tok.bos_id, 105, tok.eos_id, tok.pad_id, 300]) == "hi"
  assert tok.padded_vocab_size() == 384 and tok.padded_vocab_size(8) == 264
  assert tokenizer_lib.padded_vocab_size(256, 128) == 256
  assert tok.describe()["kind"] == "byte"


def test_sentencepiece_round_trips_source_exactly(sp, docs):
  assert sp.vocab_size == 512
  assert (sp.pad_id, sp.bos_id, sp.eos_id) == (0, 1, 2)
  for text in [PYTHON_SOURCE, UNICODE] + docs:
    assert sp.decode(sp.encode(text)) == text
  assert [sp.decode(ids) for ids in sp.encode_batch([PYTHON_SOURCE, UNICODE])] == [
      PYTHON_SOURCE, UNICODE]
  assert sp.encode_batch([PYTHON_SOURCE, UNICODE]) == [sp.encode(PYTHON_SOURCE), sp.encode(UNICODE)]
  # Merges make it shorter than bytes; unseen characters go through byte pieces.
  assert len(sp.encode(docs[0])) < 0.6 * len(docs[0].encode("utf-8"))
  emoji = [sp.id_to_piece(i) for i in sp.encode("😀")]
  assert emoji == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
  pieces = [sp.id_to_piece(i) for i in sp.encode(PYTHON_SOURCE)]
  assert "<0x0A>" not in pieces and any("\n" in p for p in pieces)  # newline is a learned piece
  assert any(set(p) == {"\u2581"} and len(p) >= 2 for p in pieces)  # so are indentation runs
  assert sp.decode([sp.bos_id] + sp.encode("x = 1") + [sp.eos_id, sp.pad_id, 10_000]) == "x = 1"


def test_sentencepiece_describe_records_settings(sp):
  d = sp.describe()
  assert d["kind"] == "sentencepiece" and d["model_type"] == "bpe" and d["vocab_size"] == 512
  assert d["normalization_rule_name"] == "identity" and d["byte_fallback"] is True
  assert d["add_dummy_prefix"] is False and d["remove_extra_whitespaces"] is False


def test_unigram_round_trip(docs):
  uni = tokenizer_lib.SentencePieceTokenizer.train(docs[:2], vocab_size=360, model_type="unigram")
  assert uni.describe()["model_type"] == "unigram"
  assert uni.decode(uni.encode(PYTHON_SOURCE + UNICODE)) == PYTHON_SOURCE + UNICODE


def test_training_is_deterministic(sp, docs):
  again = tokenizer_lib.SentencePieceTokenizer.train(docs, vocab_size=512, model_type="bpe")
  assert again.fingerprint == sp.fingerprint


def test_save_load_identical(sp, tmp_path):
  sp.save(str(tmp_path / "sp"))
  loaded = tokenizer_lib.load_tokenizer(str(tmp_path / "sp"))
  assert isinstance(loaded, tokenizer_lib.SentencePieceTokenizer)
  assert loaded.describe() == sp.describe() and loaded.fingerprint == sp.fingerprint
  assert loaded.encode(PYTHON_SOURCE + UNICODE) == sp.encode(PYTHON_SOURCE + UNICODE)
  tokenizer_lib.ByteTokenizer().save(str(tmp_path / "b"))
  assert isinstance(tokenizer_lib.load_tokenizer(str(tmp_path / "b")), tokenizer_lib.ByteTokenizer)
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "nowhere"))


def test_training_sentences_cap_and_chunks():
  docs = ["".join(f"line {i} of doc {j}\n" for i in range(500)) for j in range(20)]
  sents = tokenizer_lib.training_sentences(docs, max_bytes=20_000)
  assert 20_000 <= sum(map(len, sents)) < 20_000 + 2 * tokenizer_lib.SP_SENTENCE_CHARS
  assert all(len(s) <= tokenizer_lib.SP_SENTENCE_CHARS for s in sents)
  assert all(s.endswith("\n") for s in sents)
  assert any("doc 19" in s for s in sents)  # sampled across the corpus, not just the start
  assert len(tokenizer_lib.training_sentences(docs, max_bytes=0, max_sentences=7)) == 7


def test_get_tokenizer_caches(tmp_path, monkeypatch, docs):
  corpus = corpus_lib.Corpus(docs, "five", corpus_lib._fingerprint(("", d) for d in docs),
                             len(docs), sum(map(len, docs)))
  cfg = DataConfig(sp_vocab_size=512, cache_dir=str(tmp_path))
  first = get_tokenizer(cfg, corpus)
  assert first.describe()["corpus_fingerprint"] == corpus.fingerprint
  (entry,) = os.listdir(tmp_path / "tokenizers")
  files = sorted(os.listdir(tmp_path / "tokenizers" / entry))
  assert files == ["tokenizer.json", "tokenizer.model"]

  def no_training(*args, **kwargs):
    raise AssertionError("retrained despite a cached tokenizer")
  monkeypatch.setattr(tokenizer_lib.SentencePieceTokenizer, "train", no_training)
  cached = get_tokenizer(cfg, corpus)
  assert cached.fingerprint == first.fingerprint
  assert cached.encode(PYTHON_SOURCE) == first.encode(PYTHON_SOURCE)
  monkeypatch.undo()
  other_cfg = DataConfig(sp_vocab_size=500, cache_dir=str(tmp_path))
  other = get_tokenizer(other_cfg, corpus)
  assert other.vocab_size == 500 and len(os.listdir(tmp_path / "tokenizers")) == 2
  assert isinstance(get_tokenizer(DataConfig(tokenizer="byte"), corpus),
                    tokenizer_lib.ByteTokenizer)
  with pytest.raises(ValueError, match="tokenizer"):
    get_tokenizer(DataConfig(tokenizer="wordpiece"), corpus)


def test_vocab_too_large_names_fix():
  with pytest.raises(ValueError, match="sp_vocab_size"):
    tokenizer_lib.SentencePieceTokenizer.train(["tiny text\n"] * 3, vocab_size=5000)
