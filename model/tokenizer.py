"""Tokenizers behind one interface: raw bytes, or a sentencepiece model trained on the corpus.

The model's vocabulary must be >= `tokenizer.vocab_size`; `padded_vocab_size()` rounds it
up to a multiple of 128 for efficient matmuls (the extra ids are never produced, and
`decode` ignores them if a model samples one).

Sentencepiece is set up for source code: identity normalization, no dummy prefix, no
whitespace squeezing, whitespace-only pieces allowed and byte fallback, so every string
(newlines, indentation, tabs, any unicode) round-trips exactly through encode/decode.
"""

import abc
import hashlib
import io
import itertools
import json
import os
import time
from typing import Iterable, Iterator, Sequence

from absl import logging


CONFIG_FILE = "tokenizer.json"
SP_MODEL_FILE = "tokenizer.model"
# Training-text caps, measured on the stdlib corpus with 1 thread: BPE 4 MB ~1 s CPU;
# unigram 2 MB ~13 s CPU (4 MB would be ~27 s).
SP_MAX_TRAIN_BYTES = {"bpe": 4_000_000, "unigram": 2_000_000}
SP_MAX_TRAIN_SENTENCES = 200_000
SP_SENTENCE_CHARS = 1024  # training sentences are chunks of whole lines up to this size
_META = "\u2581"  # sentencepiece's whitespace symbol
SP_VERSION = 1  # bump when training settings change, to invalidate caches
MASK_PIECE = "[MASK]"  # masked-LM symbol (encoder runs): a user-defined sentencepiece piece


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
  """`vocab_size` rounded up to a multiple (e.g. 8 or 128) for the model's embedding table."""
  return -(-vocab_size // multiple) * multiple


class Tokenizer(abc.ABC):
  """What the training, inference and evaluation code needs from a tokenizer."""
  kind: str

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int: ...

  @property
  @abc.abstractmethod
  def pad_id(self) -> int: ...

  @property
  @abc.abstractmethod
  def bos_id(self) -> int: ...

  @property
  @abc.abstractmethod
  def eos_id(self) -> int: ...

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]: ...

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; special ids and ids >= vocab_size are skipped."""

  @abc.abstractmethod
  def describe(self) -> dict:
    """JSON-able settings: kind, vocab_size, special ids, model type, normalization, ..."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  @property
  def mask_id(self) -> int | None:
    """The [MASK] id of masked-LM training, or None for a tokenizer trained without it."""
    return None

  def padded_vocab_size(self, multiple: int = 128) -> int:
    return padded_vocab_size(self.vocab_size, multiple)

  def _model_bytes(self) -> bytes:
    return b""

  @property
  def fingerprint(self) -> str:
    """sha256 of the settings and model: equal fingerprints give equal token ids."""
    h = hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode())
    h.update(self._model_bytes())
    return h.hexdigest()

  def save(self, directory: str) -> None:
    """Writes tokenizer.json (describe()) and any model file; `load_tokenizer` reads them."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
      json.dump(self.describe(), f, indent=2, sort_keys=True)


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes are ids 0..255; pad=256, bos=257, eos=258; vocab_size 259.

  ByteTokenizer(mask=True) adds [MASK] = 259 (vocab_size 260) for masked-LM runs; the
  default one describes itself (and so fingerprints) exactly as before.
  """
  kind = "byte"

  def __init__(self, mask: bool = False):
    self._mask = bool(mask)

  vocab_size = property(lambda self: 260 if self._mask else 259)
  pad_id = property(lambda self: 256)
  bos_id = property(lambda self: 257)
  eos_id = property(lambda self: 258)
  mask_id = property(lambda self: 259 if self._mask else None)

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Iterable[int]) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

  def describe(self) -> dict:
    info = dict(kind=self.kind, vocab_size=self.vocab_size, pad_id=self.pad_id,
                bos_id=self.bos_id, eos_id=self.eos_id, model_type="byte",
                normalization_rule_name="identity", byte_fallback=True)
    return dict(info, mask_id=self.mask_id) if self._mask else info


def _sentences(documents: Iterable[str]) -> Iterator[str]:
  """Chunks of whole lines (newlines kept) of up to ~SP_SENTENCE_CHARS characters."""
  for doc in documents:
    chunk, size = [], 0
    for line in doc.splitlines(keepends=True):
      while len(line) > SP_SENTENCE_CHARS:
        yield line[:SP_SENTENCE_CHARS]
        line = line[SP_SENTENCE_CHARS:]
      if size + len(line) > SP_SENTENCE_CHARS and chunk:
        yield "".join(chunk)
        chunk, size = [], 0
      chunk.append(line)
      size += len(line)
    if chunk:
      yield "".join(chunk)


def training_sentences(documents: Sequence[str], max_bytes: int = SP_MAX_TRAIN_BYTES["bpe"],
                       max_sentences: int = SP_MAX_TRAIN_SENTENCES) -> list[str]:
  """A deterministic sample of ~`max_bytes` characters: every k-th chunk across the whole corpus."""
  total = sum(len(d) for d in documents)
  stride = max(1, total // max_bytes) if max_bytes > 0 else 1
  sentences, size = [], 0
  for sentence in itertools.islice(_sentences(documents), 0, None, stride):
    if len(sentences) >= max_sentences or (max_bytes > 0 and size >= max_bytes):
      break
    sentences.append(sentence)
    size += len(sentence)
  return sentences


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model (bpe or unigram) plus the settings it was trained with."""
  kind = "sentencepiece"

  def __init__(self, model_proto: bytes, info: dict | None = None):
    import sentencepiece as spm
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    self._info = dict(info or {})
    self.num_threads = min(os.cpu_count() or 1, 16)

  def __reduce__(self):  # for tokenizing worker processes: the processor itself won't pickle
    return (SentencePieceTokenizer, (self._proto, self._info))

  @classmethod
  def train(cls, documents: Sequence[str], *, vocab_size: int = 2048, model_type: str = "bpe",
            character_coverage: float = 1.0, normalization_rule_name: str = "identity",
            max_train_bytes: int | None = None,
            max_train_sentences: int = SP_MAX_TRAIN_SENTENCES,
            num_threads: int = 2, extra_info: dict | None = None,
            mask: bool = False) -> "SentencePieceTokenizer":
    """Trains in memory on a sample of `documents` (see `training_sentences`).

    `max_train_bytes` defaults to SP_MAX_TRAIN_BYTES[model_type]; `extra_info` (e.g. the
    corpus fingerprint) is recorded in describe(). mask=True adds MASK_PIECE as a
    user-defined symbol (one id, never split) for masked-LM training.
    """
    import sentencepiece as spm
    if model_type not in SP_MAX_TRAIN_BYTES:
      raise ValueError(f"sp_model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if max_train_bytes is None:
      max_train_bytes = SP_MAX_TRAIN_BYTES[model_type]
    sentences = training_sentences(documents, max_train_bytes, max_train_sentences)
    if not sentences:
      raise ValueError("no text to train the sentencepiece tokenizer on; add data")
    settings = dict(
        model_type=model_type, vocab_size=vocab_size, character_coverage=character_coverage,
        normalization_rule_name=normalization_rule_name, byte_fallback=True,
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, pad_id=0, bos_id=1, eos_id=2, unk_id=3)
    if mask:
      settings["user_defined_symbols"] = [MASK_PIECE]
    start = time.perf_counter()
    writer = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(sentences), model_writer=writer, num_threads=num_threads,
          max_sentence_length=4 * SP_SENTENCE_CHARS + 16, minloglevel=2, **settings)
    except RuntimeError as e:
      raise ValueError(
          f"sentencepiece training failed: {str(e).rstrip('.')}. Fix: change "
          "--config.data.sp_vocab_size as the message says, lower "
          "--config.data.sp_character_coverage (rare characters then use byte pieces), train "
          "on more text, or use --config.data.tokenizer=byte") from None
    seconds = time.perf_counter() - start
    n_chars = sum(len(s) for s in sentences)
    logging.info("trained sentencepiece %s vocab %d on %d sentences (%.2f MB) in %.1f s",
                 model_type, vocab_size, len(sentences), n_chars / 1e6, seconds)
    settings.update(train_chars=n_chars, train_sentences=len(sentences),
                    max_train_bytes=max_train_bytes, version=SP_VERSION, **(extra_info or {}))
    return cls(writer.getvalue(), settings)

  vocab_size = property(lambda self: self._sp.vocab_size())
  pad_id = property(lambda self: self._sp.pad_id())
  bos_id = property(lambda self: self._sp.bos_id())
  eos_id = property(lambda self: self._sp.eos_id())
  unk_id = property(lambda self: self._sp.unk_id())

  @property
  def mask_id(self) -> int | None:
    i = self._sp.piece_to_id(MASK_PIECE)
    return None if self._sp.IsUnknown(i) or self._sp.id_to_piece(i) != MASK_PIECE else i

  def encode(self, text: str) -> list[int]:
    if _META in text:
      return self._encode_with_meta(text)
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    encoded = self._sp.encode(list(texts), out_type=int, num_threads=self.num_threads)
    return [self._encode_with_meta(t) if _META in t else ids for t, ids in zip(texts, encoded)]

  def _encode_with_meta(self, text: str) -> list[int]:
    """Encodes a literal U+2581 as byte pieces; sentencepiece would decode it as a space."""
    meta_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _META.encode("utf-8")]
    ids = []
    for i, part in enumerate(text.split(_META)):
      if i:
        ids.extend(meta_ids)
      ids.extend(self._sp.encode(part, out_type=int))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    n = self.vocab_size
    return self._sp.decode([int(i) for i in ids if 0 <= int(i) < n])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def describe(self) -> dict:
    info = dict(self._info, kind=self.kind, vocab_size=self.vocab_size, pad_id=self.pad_id,
                bos_id=self.bos_id, eos_id=self.eos_id, unk_id=self.unk_id)
    return info if self.mask_id is None else dict(info, mask_id=self.mask_id)

  def _model_bytes(self) -> bytes:
    return self._proto

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, SP_MODEL_FILE), "wb") as f:
      f.write(self._proto)
    super().save(directory)


def load_tokenizer(directory: str) -> Tokenizer:
  """Reads what `Tokenizer.save(directory)` wrote."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}; pass the directory a tokenizer "
                            "was saved to (a run directory or the tokenizer cache)")
  try:
    with open(path) as f:
      info = json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}): the tokenizer is damaged; restore it "
                     "from a backup or retrain (delete it if it is a cache entry)") from None
  kind = info.get("kind")
  if kind == ByteTokenizer.kind:
    return ByteTokenizer(mask=info.get("mask_id") is not None)
  if kind == SentencePieceTokenizer.kind:
    model_path = os.path.join(directory, SP_MODEL_FILE)
    with open(model_path, "rb") as f:
      proto = f.read()
    settings = {k: v for k, v in info.items()
                if k not in ("kind", "vocab_size", "pad_id", "bos_id", "eos_id", "unk_id",
                             "mask_id")}
    try:
      return SentencePieceTokenizer(proto, settings)
    except (RuntimeError, OSError, TypeError) as e:
      raise ValueError(f"{model_path} is not a valid sentencepiece model ({e}): the tokenizer "
                       "is damaged; restore it from a backup or retrain (delete it if it is a "
                       "cache entry)") from None
  if kind == "hf":  # a Hugging Face tokenizer.json (model/hf/tokenizer.py)
    from model.hf import tokenizer as hf_tokenizer  # pylint: disable=g-import-not-at-top
    return hf_tokenizer.load(directory, info)
  raise ValueError(f"{path}: unknown tokenizer kind {kind!r} (expected 'byte', "
                   "'sentencepiece' or 'hf')")
