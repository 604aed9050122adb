"""Token streams on disk and stateless batches over them.

The corpus is split by document, tokenized once (documents each followed by eos) and
cached as train.npy / val.npy under `<cache_dir>/tokens/<hash>`; training memory-maps
them. A training batch is a pure function of (seed, step, process): resuming at step k
needs no iterator state and each process reads only its own rows of the global batch.
"""

import hashlib
import itertools
import json
import os
import time
from typing import Sequence

import numpy as np
from absl import logging

from train import corpus as corpus_lib
from train import tokenizer as tokenizer_lib
from model.files import save_npy_atomic, write_json_atomic

_FORMAT_VERSION = 2  # 2: meta.json records file sizes and checksums
_ENCODE_CHUNK_CHARS = 1 << 20


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def tokenize_documents(tokenizer: tokenizer_lib.Tokenizer, documents: Sequence[str],
                       label: str = "") -> np.ndarray:
  """One stream: each document's ids followed by eos, encoded in ~1 MB batches."""
  dtype = token_dtype(tokenizer.vocab_size)
  eos = [tokenizer.eos_id]
  total_chars = sum(len(d) for d in documents)
  parts, done_chars, start, last_log = [], 0, time.perf_counter(), time.perf_counter()

  def flush(batch):
    encoded = tokenizer.encode_batch(batch)
    count = sum(len(ids) for ids in encoded) + len(encoded)
    flat = itertools.chain.from_iterable(itertools.chain(ids, eos) for ids in encoded)
    parts.append(np.fromiter(flat, dtype=dtype, count=count))

  batch, size = [], 0
  for doc in documents:
    batch.append(doc)
    size += len(doc)
    if size >= _ENCODE_CHUNK_CHARS:
      flush(batch)
      done_chars += size
      batch, size = [], 0
      if time.perf_counter() - last_log > 5.0:
        last_log = time.perf_counter()
        logging.info("tokenizing %s: %.1f / %.1f M characters (%.2f M/s)", label, done_chars / 1e6,
                     total_chars / 1e6, done_chars / 1e6 / (last_log - start))
  if batch:
    flush(batch)
  return np.concatenate(parts) if parts else np.zeros((0,), dtype)


def tokens_cache_key(corpus: corpus_lib.Corpus, tokenizer: tokenizer_lib.Tokenizer,
                     val_fraction: float) -> str:
  settings = dict(corpus=corpus.fingerprint, tokenizer=tokenizer.fingerprint,
                  val_fraction=val_fraction, version=_FORMAT_VERSION)
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def build_token_files(corpus: corpus_lib.Corpus, tokenizer: tokenizer_lib.Tokenizer,
                      val_fraction: float, cache_dir: str) -> tuple[str, dict]:
  """Writes (or finds) train.npy, val.npy and meta.json; returns (directory, meta).

  meta.json is written last, so its presence marks a complete cache entry.
  """
  directory = os.path.join(cache_dir, "tokens",
                           tokens_cache_key(corpus, tokenizer, val_fraction)[:24])
  meta_path = os.path.join(directory, "meta.json")
  if os.path.exists(meta_path):
    problem = verify_token_files(directory)
    if problem is None:
      with open(meta_path) as f:
        return directory, json.load(f)
    logging.warning("token cache %s is damaged (%s): rebuilding it", directory, problem)
    os.remove(meta_path)
  os.makedirs(directory, exist_ok=True)
  train_docs, val_docs = corpus_lib.split_corpus(corpus, val_fraction)
  start = time.perf_counter()
  meta = dict(corpus=corpus.name, fingerprint=corpus.fingerprint,
              tokenizer_fingerprint=tokenizer.fingerprint, val_fraction=val_fraction)
  for split, docs in (("train", train_docs), ("val", val_docs)):
    tokens = tokenize_documents(tokenizer, docs, label=split)
    save_npy_atomic(os.path.join(directory, f"{split}.npy"), tokens)
    meta[f"n_{split}_documents"] = len(docs)
    meta[f"n_{split}_bytes"] = sum(len(d.encode("utf-8")) for d in docs)
    meta[f"n_{split}_tokens"] = int(tokens.size)
    meta.setdefault("files", {})[f"{split}.npy"] = file_checksum(
        os.path.join(directory, f"{split}.npy"))
  meta["tokenize_seconds"] = time.perf_counter() - start
  meta["dtype"] = str(token_dtype(tokenizer.vocab_size))
  write_json_atomic(meta_path, meta)
  logging.info("tokenized %s in %.1f s: %d train / %d val tokens -> %s", corpus.name,
               meta["tokenize_seconds"], meta["n_train_tokens"], meta["n_val_tokens"], directory)
  return directory, meta


_FULL_CHECKSUM_BYTES = 256 << 20  # larger files: checksum of samples at both ends
_SAMPLE_BYTES = 4 << 20


def file_checksum(path: str) -> dict:
  """{"bytes", "sha256"} of a cache file; sha256 of the whole file up to 256 MB, of its
  first and last 4 MB (and its size) beyond, so that opening a cache stays cheap."""
  size = os.path.getsize(path)
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    if size <= _FULL_CHECKSUM_BYTES:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    else:
      digest.update(f.read(_SAMPLE_BYTES))
      f.seek(size - _SAMPLE_BYTES)
      digest.update(f.read(_SAMPLE_BYTES))
  return {"bytes": size, "sha256": digest.hexdigest()}


def verify_token_files(directory: str) -> str | None:
  """None if every file meta.json lists has its recorded size and checksum, else what is
  wrong (named with its path)."""
  try:
    with open(os.path.join(directory, "meta.json")) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    return f"meta.json unreadable: {e}"
  files = meta.get("files")
  if not files:
    return "meta.json records no checksums (written by an older version)"
  for name, want in files.items():
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      return f"{path} is missing"
    if os.path.getsize(path) != want["bytes"]:
      return f"{path} has {os.path.getsize(path)} bytes, expected {want['bytes']}"
    if file_checksum(path)["sha256"] != want["sha256"]:
      return f"{path} does not match its recorded checksum"
  return None


class TokenDataset:
  """Non-overlapping windows of seq_len+1 tokens over a 1-D token array (or .npy path).

  Window w covers tokens[w*seq_len : w*seq_len + seq_len + 1]; inputs are its first
  seq_len tokens and targets the last seq_len.
  """

  def __init__(self, tokens, seq_len: int, name: str = "tokens"):
    if isinstance(tokens, (str, os.PathLike)):
      tokens = np.load(tokens, mmap_mode="r")
    if not isinstance(tokens, np.ndarray):
      tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokens must be a 1-D integer array, got {tokens.dtype}{tokens.shape}")
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    self.tokens = tokens
    self.seq_len = seq_len
    self.name = name
    self.n_tokens = int(tokens.size)
    self.n_windows = max(0, (self.n_tokens - 1) // seq_len)
    self.tokens_per_epoch = self.n_windows * seq_len
    self._perms: dict[tuple[int, int], np.ndarray] = {}
    self.check_batch_size(1)

  def check_batch_size(self, batch_size: int) -> None:
    """Raises a ValueError naming the fix if one batch needs more windows than exist."""
    if self.n_windows < batch_size:
      need = batch_size * self.seq_len + 1
      raise ValueError(
          f"the {self.name} split has {self.n_tokens} tokens ({self.n_windows} windows of "
          f"seq_len {self.seq_len}), but one batch of {batch_size} needs {need} tokens; add more "
          "data (--config.data.data), or lower --config.data.seq_len or --config.train.batch_size"
          + (" (or raise --config.data.val_fraction)" if self.name == "val" else ""))

  def epochs_at(self, step: int, batch_size: int) -> float:
    """Passes over the data completed after `step` steps of `batch_size` sequences."""
    return step * batch_size / self.n_windows

  def _permutation(self, seed: int, epoch: int) -> np.ndarray:
    key = (seed, epoch)
    if key not in self._perms:
      rng = np.random.default_rng(np.random.SeedSequence([seed & (2**63 - 1), epoch]))
      if len(self._perms) >= 2:
        self._perms.pop(next(iter(self._perms)))
      self._perms[key] = rng.permutation(self.n_windows)
    return self._perms[key]

  def _gather(self, windows: np.ndarray) -> dict:
    rows = np.stack([self.tokens[w * self.seq_len:(w + 1) * self.seq_len + 1] for w in windows])
    rows = rows.astype(np.int32)
    return dict(inputs=rows[:, :-1], targets=rows[:, 1:])

  @staticmethod
  def _local_rows(batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
    if batch_size % process_count:
      raise ValueError(f"global batch_size {batch_size} is not divisible by {process_count} "
                       "processes; pick a batch size that is a multiple of the process count")
    b = batch_size // process_count
    return process_index * b + np.arange(b)

  def batch(self, seed: int, step: int, batch_size: int, process_index: int = 0,
            process_count: int = 1) -> dict:
    """This process's rows of global batch `step`: {inputs, targets} int32 [b, seq_len].

    Global row r of step s is item i = s*batch_size + r of an endless sequence of epochs;
    epoch i // n_windows visits every window once, in an order seeded by (seed, epoch).
    """
    self.check_batch_size(batch_size)
    items = step * batch_size + self._local_rows(batch_size, process_index, process_count)
    epochs, positions = np.divmod(items, self.n_windows)
    windows = np.empty_like(items)
    for epoch in np.unique(epochs):
      mask = epochs == epoch
      windows[mask] = self._permutation(seed, int(epoch))[positions[mask]]
    return self._gather(windows)

  def eval_batches(self, batch_size: int, n_batches: int | None = None, process_index: int = 0,
                   process_count: int = 1) -> list[dict]:
    """Fixed evaluation batches: windows 0, 1, 2, ... in order, the same for every run.

    Returns min(n_batches, n_windows // batch_size) batches (all full ones if None).
    """
    self.check_batch_size(batch_size)
    available = self.n_windows // batch_size
    if n_batches is None:
      n_batches = available
    elif n_batches > available:
      logging.warning("%s split has only %d batches of %d; evaluating on those", self.name,
                      available, batch_size)
      n_batches = available
    local = self._local_rows(batch_size, process_index, process_count)
    return [self._gather(i * batch_size + local) for i in range(n_batches)]


def build_datasets(data_config, cache_dir: str | None = None, batch_size: int | None = None,
                   tokenizer: tokenizer_lib.Tokenizer | None = None):
  """Corpus -> tokenizer -> cached token files -> (tokenizer, train_ds, val_ds, info).

  `batch_size`, when given, is checked against the training split up front. `tokenizer`
  (e.g. the one of an --init_from run) replaces the one data_config would train.
  """
  cache_dir = corpus_lib.resolve_cache_dir(data_config, cache_dir)
  corpus = corpus_lib.load_corpus(data_config)
  if tokenizer is None:
    tokenizer = tokenizer_lib.get_tokenizer(data_config, corpus, cache_dir)
  directory, meta = build_token_files(corpus, tokenizer, data_config.val_fraction, cache_dir)
  train_ds = TokenDataset(os.path.join(directory, "train.npy"), data_config.seq_len, name="train")
  val_ds = TokenDataset(os.path.join(directory, "val.npy"), data_config.seq_len, name="val")
  train_ds.checksum = meta["files"]["train.npy"]["sha256"][:32]
  if batch_size is not None:
    train_ds.check_batch_size(batch_size)
  info = dict(
      corpus=corpus.name, fingerprint=corpus.fingerprint, n_documents=corpus.n_documents,
      n_bytes=corpus.n_bytes, n_train_documents=meta["n_train_documents"],
      n_val_documents=meta["n_val_documents"], n_train_tokens=meta["n_train_tokens"],
      n_val_tokens=meta["n_val_tokens"],
      val_bytes_per_token=meta["n_val_bytes"] / max(1, meta["n_val_tokens"]),
      train_windows=train_ds.n_windows, val_windows=val_ds.n_windows,
      seq_len=data_config.seq_len, tokens_dir=directory, tokenizer=tokenizer.describe())
  return tokenizer, train_ds, val_ds, info
