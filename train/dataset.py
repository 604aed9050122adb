"""Token streams on disk and stateless batches over them.

The corpus is split by document and tokenized once, streaming and in parallel worker
processes (train/token_shards.py: documents each followed by eos), into raw token shards
plus meta.json (the manifest: shards, sizes, checksums) under `<cache_dir>/tokens/<hash>`;
training memory-maps them. In a multi-host run with a shared cache directory one host
tokenizes and the others wait for it (train/shared_cache.py). A training batch is a pure
function of (seed, step, process): resuming at step k needs no iterator state and each
process reads only its own rows of the global batch.
"""

import hashlib
import io
import json
import os
import time
from typing import Sequence

import numpy as np
from absl import logging

from train import corpus as corpus_lib
from train import shared_cache
from train import token_shards
from train import tokenizer as tokenizer_lib
from train.token_shards import ShardedTokens, token_dtype
from model.files import write_json_atomic

_FORMAT_VERSION = 3  # 2: meta.json records checksums; 3: sharded raw tokens + manifest


def tokenize_documents(tokenizer: tokenizer_lib.Tokenizer,
                       documents: Sequence[str]) -> np.ndarray:
  """One in-memory stream: each document's ids followed by eos (small inputs and tests)."""
  parts = list(token_shards.encode_stream(tokenizer, documents, workers=1))
  return (np.concatenate(parts) if parts
          else np.zeros((0,), token_dtype(tokenizer.vocab_size)))


def tokens_cache_key(corpus: corpus_lib.Corpus, tokenizer: tokenizer_lib.Tokenizer,
                     val_fraction: float) -> str:
  settings = dict(corpus=corpus.fingerprint, tokenizer=tokenizer.fingerprint,
                  val_fraction=val_fraction, version=_FORMAT_VERSION)
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def token_cache_dir(corpus, tokenizer, val_fraction: float, cache_dir: str) -> str:
  return os.path.join(cache_dir, "tokens",
                      tokens_cache_key(corpus, tokenizer, val_fraction)[:24])


def auto_workers(corpus: corpus_lib.Corpus, requested: int = 0) -> int:
  """`requested` if > 0, else 1 below 64 MB of text (spawning costs more than it saves)
  and up to 8 processes (one per core) above."""
  if requested > 0:
    return requested
  if corpus.n_bytes < 64 << 20:
    return 1
  return max(1, min(8, os.cpu_count() or 1))


def load_token_meta(directory: str) -> dict | None:
  """The manifest of a complete, undamaged cache entry, else None."""
  meta_path = os.path.join(directory, "meta.json")
  if not os.path.exists(meta_path):
    return None
  problem = verify_token_files(directory)
  if problem is None:
    with open(meta_path) as f:
      return json.load(f)
  logging.warning("token cache %s is damaged (%s): rebuilding it", directory, problem)
  try:
    os.remove(meta_path)
  except FileNotFoundError:
    pass
  return None


def build_token_files(corpus: corpus_lib.Corpus, tokenizer: tokenizer_lib.Tokenizer,
                      val_fraction: float, cache_dir: str, workers: int = 0,
                      shard_tokens: int = token_shards.SHARD_TOKENS) -> tuple[str, dict]:
  """Writes (or finds) the train-/val- shards and meta.json; returns (directory, meta).

  meta.json is written last, so its presence marks a complete cache entry.
  """
  directory = token_cache_dir(corpus, tokenizer, val_fraction, cache_dir)
  meta = load_token_meta(directory)
  if meta is not None:
    return directory, meta
  os.makedirs(directory, exist_ok=True)
  workers = auto_workers(corpus, workers)
  train_docs, val_docs = corpus_lib.split_views(corpus, val_fraction)
  start = time.perf_counter()
  meta = dict(corpus=corpus.name, fingerprint=corpus.fingerprint,
              tokenizer_fingerprint=tokenizer.fingerprint, val_fraction=val_fraction,
              dtype=str(token_dtype(tokenizer.vocab_size)), workers=workers, shards={},
              files={})
  for split, docs in (("train", train_docs), ("val", val_docs)):
    written = token_shards.write_token_shards(tokenizer, docs, directory, split, workers,
                                              shard_tokens)
    meta["shards"][split] = written["shards"]
    meta[f"n_{split}_documents"] = written["documents"]
    meta[f"n_{split}_bytes"] = written["bytes"]
    meta[f"n_{split}_tokens"] = written["tokens"]
    for shard in written["shards"]:
      meta["files"][shard["file"]] = file_checksum(os.path.join(directory, shard["file"]))
    meta.setdefault("stream_sha256", {})[split] = stream_checksum(
        directory, written["shards"], meta["dtype"])
  meta["tokenize_seconds"] = time.perf_counter() - start
  read = meta["n_train_documents"] + meta["n_val_documents"]
  if read != max(2, corpus.n_documents):  # a one-document corpus is cut in two
    raise RuntimeError(
        f"the corpus {corpus.name} changed while it was read ({corpus.n_documents} documents "
        f"when fingerprinted, {read} when tokenized); leave its files unchanged during the "
        "run and start again")
  write_json_atomic(os.path.join(directory, "meta.json"), meta)
  n_tokens = meta["n_train_tokens"] + meta["n_val_tokens"]
  logging.info("tokenized %s in %.1f s with %d worker(s) (%.2f M tokens/s): %d train / %d val "
               "tokens in %d shards -> %s", corpus.name, meta["tokenize_seconds"], workers,
               n_tokens / 1e6 / max(meta["tokenize_seconds"], 1e-9), meta["n_train_tokens"],
               meta["n_val_tokens"], len(meta["files"]), directory)
  return directory, meta


def split_tokens(directory: str, meta: dict, split: str) -> ShardedTokens:
  """One split of a cache entry as a single memory-mapped token array."""
  return ShardedTokens([os.path.join(directory, s["file"]) for s in meta["shards"][split]],
                       meta["dtype"])


def stream_checksum(directory: str, shards: list[dict], dtype) -> str:
  """sha256 of the split as one .npy file (header + tokens), read shard by shard: the
  checksum format 2 caches recorded for their train.npy, so runs trained on those still
  resume (their data identity is unchanged)."""
  header = io.BytesIO()
  n_tokens = sum(s["tokens"] for s in shards)
  np.lib.format.write_array_header_1_0(header, {
      "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
      "shape": (n_tokens,)})
  digest = hashlib.sha256(header.getvalue())
  for shard in shards:
    with open(os.path.join(directory, shard["file"]), "rb") as f:
      for block in iter(lambda: f.read(1 << 22), b""):
        digest.update(block)
  return digest.hexdigest()


def split_checksum(meta: dict, split: str) -> str:
  """The identity of a split's token stream (see `stream_checksum`)."""
  return meta["stream_sha256"][split]


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
    if not isinstance(tokens, (np.ndarray, ShardedTokens)):
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
  directory = token_cache_dir(corpus, tokenizer, data_config.val_fraction, cache_dir)
  # Waiting hosts poll for meta.json (written last); build_token_files then verifies it once.
  _, meta = shared_cache.build_once(
      directory, lambda: build_token_files(corpus, tokenizer, data_config.val_fraction,
                                           cache_dir, data_config.tokenize_workers),
      lambda: os.path.exists(os.path.join(directory, "meta.json")))
  train_ds = TokenDataset(split_tokens(directory, meta, "train"), data_config.seq_len,
                          name="train")
  val_ds = TokenDataset(split_tokens(directory, meta, "val"), data_config.seq_len, name="val")
  train_ds.checksum = split_checksum(meta, "train")[:32]
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
