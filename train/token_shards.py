"""Tokenizing a document stream in parallel into memory-mapped token shards.

Documents are read lazily and grouped into ~1 MB chunks; worker processes encode chunks
(each document's ids followed by eos) and the parent writes the results, in chunk order, to
raw little-endian shard files of `shard_tokens` tokens each (the last one shorter). The
token stream, and so every shard, is the same byte for byte whatever the worker count. At
most 2 x workers chunks are in flight, so memory does not grow with the corpus.

`ShardedTokens` reads the shards back as one 1-D token array (slices may cross shards).
"""

import collections
import itertools
import multiprocessing
import os
import pickle
import time
from typing import Iterable, Iterator, Sequence

import numpy as np
from absl import logging

CHUNK_CHARS = 1 << 20  # characters per encode task
SHARD_TOKENS = 1 << 26  # tokens per shard file (128 MB as uint16)
_IN_FLIGHT_PER_WORKER = 2


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def encode_chunk(tokenizer, texts: Sequence[str]) -> np.ndarray:
  """One flat array: each text's ids followed by eos."""
  encoded = tokenizer.encode_batch(texts)
  eos = (tokenizer.eos_id,)
  count = sum(len(ids) for ids in encoded) + len(encoded)
  flat = itertools.chain.from_iterable(itertools.chain(ids, eos) for ids in encoded)
  return np.fromiter(flat, dtype=token_dtype(tokenizer.vocab_size), count=count)


def chunk_documents(documents: Iterable[str], chunk_chars: int = CHUNK_CHARS
                    ) -> Iterator[list[str]]:
  """Consecutive documents grouped until each group holds >= chunk_chars characters."""
  chunk, size = [], 0
  for doc in documents:
    chunk.append(doc)
    size += len(doc)
    if size >= chunk_chars:
      yield chunk
      chunk, size = [], 0
  if chunk:
    yield chunk


_WORKER_TOKENIZER = None


def _init_worker(tokenizer_pickle: bytes) -> None:
  global _WORKER_TOKENIZER
  _WORKER_TOKENIZER = pickle.loads(tokenizer_pickle)
  if hasattr(_WORKER_TOKENIZER, "num_threads"):
    _WORKER_TOKENIZER.num_threads = 1  # the processes are the parallelism


def _encode_in_worker(texts: list[str]) -> np.ndarray:
  return encode_chunk(_WORKER_TOKENIZER, texts)


def encode_stream(tokenizer, documents: Iterable[str], workers: int = 1,
                  chunk_chars: int = CHUNK_CHARS) -> Iterator[np.ndarray]:
  """Encoded chunks of `documents`, in order; workers > 1 encodes in that many processes.

  The processes are spawned (not forked: the parent may hold JAX's threads), get the
  tokenizer pickled, and are stopped when the iterator is closed or raises.
  """
  chunks = chunk_documents(documents, chunk_chars)
  if workers <= 1:
    for chunk in chunks:
      yield encode_chunk(tokenizer, chunk)
    return
  context = multiprocessing.get_context("spawn")
  with context.Pool(workers, initializer=_init_worker,
                    initargs=(pickle.dumps(tokenizer),)) as pool:
    pending = collections.deque()
    for chunk in chunks:
      pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
      if len(pending) >= _IN_FLIGHT_PER_WORKER * workers:
        yield pending.popleft().get()
    while pending:
      yield pending.popleft().get()


class ShardWriter:
  """Appends tokens to `<directory>/<prefix>-NNNNN.bin` files of `shard_tokens` tokens.

  Each shard is written to a temporary name and renamed when full, so a reader (or a second
  writer of the same content) never sees a partial shard under its final name.
  """

  def __init__(self, directory: str, prefix: str, dtype: np.dtype,
               shard_tokens: int = SHARD_TOKENS):
    if shard_tokens < 1:
      raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
    self.directory, self.prefix, self.dtype = directory, prefix, np.dtype(dtype)
    self.shard_tokens = shard_tokens
    self.shards: list[dict] = []  # {"file", "tokens"} of the finished shards
    self._file = None
    self._name = self._tmp_path = None
    self._in_shard = 0

  def _open(self) -> None:
    self._name = f"{self.prefix}-{len(self.shards):05d}.bin"
    self._tmp_path = os.path.join(self.directory, f".{self._name}.tmp-{os.getpid()}")
    self._file = open(self._tmp_path, "wb")
    self._in_shard = 0

  def _close_shard(self) -> None:
    self._file.close()
    os.replace(self._tmp_path, os.path.join(self.directory, self._name))
    self.shards.append({"file": self._name, "tokens": self._in_shard})
    self._file = self._name = self._tmp_path = None

  def write(self, tokens: np.ndarray) -> None:
    tokens = np.asarray(tokens, dtype=self.dtype.newbyteorder("<"))
    while tokens.size:
      if self._file is None:
        self._open()
      take = min(tokens.size, self.shard_tokens - self._in_shard)
      self._file.write(tokens[:take].tobytes())
      self._in_shard += take
      tokens = tokens[take:]
      if self._in_shard == self.shard_tokens:
        self._close_shard()

  def close(self) -> list[dict]:
    """Finishes the last shard (an empty stream still gets one empty shard)."""
    if self._file is not None:
      self._close_shard()
    elif not self.shards:
      self._open()
      self._close_shard()
    return self.shards

  def abort(self) -> None:
    """Drops the unfinished shard's temporary file (after an error or an interrupt)."""
    if self._file is not None:
      self._file.close()
      try:
        os.remove(self._tmp_path)
      except OSError:
        pass
      self._file = None


def write_token_shards(tokenizer, documents: Iterable[str], directory: str, prefix: str,
                       workers: int = 1, shard_tokens: int = SHARD_TOKENS,
                       chunk_chars: int = CHUNK_CHARS) -> dict:
  """Tokenizes `documents` into shards; returns {"shards", "tokens", "documents", "bytes"}."""
  writer = ShardWriter(directory, prefix, token_dtype(tokenizer.vocab_size), shard_tokens)
  counts = dict(tokens=0, documents=0, bytes=0)

  def counted(docs):
    for doc in docs:
      counts["documents"] += 1
      counts["bytes"] += len(doc.encode("utf-8"))
      yield doc

  start = last_log = time.perf_counter()
  try:
    for tokens in encode_stream(tokenizer, counted(documents), workers, chunk_chars):
      writer.write(tokens)
      counts["tokens"] += int(tokens.size)
      if time.perf_counter() - last_log > 10.0:
        last_log = time.perf_counter()
        logging.info("tokenizing %s: %.1f MB, %.1f M tokens (%.2f M tokens/s, %d workers)",
                     prefix, counts["bytes"] / 1e6, counts["tokens"] / 1e6,
                     counts["tokens"] / 1e6 / (last_log - start), workers)
    shards = writer.close()
  except BaseException:
    writer.abort()
    raise
  return dict(shards=shards, **counts)


class ShardedTokens:
  """Shard files (raw tokens of one dtype) read as one 1-D array: len, dtype and slicing."""

  ndim = 1

  def __init__(self, paths: Sequence[str], dtype):
    self.dtype = np.dtype(dtype)
    self.paths = list(paths)
    parts = [np.memmap(p, dtype=self.dtype, mode="r") for p in self.paths
             if os.path.getsize(p) > 0]
    self._parts = parts
    self._starts = np.cumsum([0] + [p.size for p in parts])
    self.size = int(self._starts[-1])
    self.shape = (self.size,)

  def __len__(self) -> int:
    return self.size

  def __array__(self, dtype=None, copy=None):
    """Always a copy in memory (a view would fault if a shard file were later rewritten)."""
    del copy
    return np.array(self[0:self.size], dtype=dtype)

  def __getitem__(self, index):
    if not isinstance(index, slice) or index.step not in (None, 1):
      raise TypeError("ShardedTokens supports contiguous slices only")
    start, stop, _ = index.indices(self.size)
    if stop <= start:
      return np.zeros((0,), self.dtype)
    first = int(np.searchsorted(self._starts, start, side="right")) - 1
    pieces = []
    while start < stop:
      lo = start - int(self._starts[first])
      take = min(stop, int(self._starts[first + 1])) - start
      pieces.append(self._parts[first][lo:lo + take])
      start += take
      first += 1
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
