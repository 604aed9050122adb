"""Text corpora: the embedded Python-stdlib corpus or the user's files, fingerprinted and split.

A corpus is an ordered list of documents (strings). Its fingerprint is a sha256 over the
documents in order, so caches of tokenizers and token arrays built from it are keyed by
content, not by path. The train/validation split is by document and never overlaps.
"""

import dataclasses
import glob
import hashlib
import heapq
import json
import os
import sys
import sysconfig
from typing import Iterator, Sequence

from absl import logging

USER_SUFFIXES = (".txt", ".jsonl", ".md")
# Any directory with one of these names is skipped (covers idlelib/idle_test, lib2to3/tests, ...).
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclasses.dataclass
class Corpus:
  """An ordered sequence of documents plus what identifies it.

  `documents` is a list for the embedded corpus (~12 MB) and a lazy, re-iterable view of the
  files for the user's corpus (`UserDocuments`: read again on each pass, never held whole).
  """
  documents: Sequence[str]
  name: str
  fingerprint: str
  n_documents: int
  n_bytes: int

  def iter_documents(self) -> Iterator[str]:
    return iter(self.documents)


def resolve_cache_dir(data_config=None, cache_dir: str | None = None) -> str:
  """Cache root: the argument, else DataConfig.cache_dir, else $JAXLM_CACHE, else ~/.cache/jaxlm."""
  chosen = cache_dir or (data_config.cache_dir if data_config is not None else "")
  chosen = chosen or os.environ.get("JAXLM_CACHE", "") or os.path.join("~", ".cache", "jaxlm")
  return os.path.abspath(os.path.expanduser(chosen))


def _fingerprint(named_documents, extra: str = "") -> str:
  """sha256 over (name, content) pairs, each length-prefixed so boundaries count."""
  h = hashlib.sha256(extra.encode())
  for name, text in named_documents:
    for part in (name.encode(), text.encode("utf-8")):
      h.update(len(part).to_bytes(8, "little"))
      h.update(part)
  return h.hexdigest()


def _take_bytes(named_documents, max_bytes: int):
  """The leading documents until `max_bytes` UTF-8 bytes are reached (all if max_bytes <= 0)."""
  taken, total = [], 0
  for name, text in named_documents:
    if max_bytes > 0 and total >= max_bytes:
      break
    taken.append((name, text))
    total += len(text.encode("utf-8"))
  return taken, total


def stdlib_files() -> list[tuple[str, str]]:
  """(relative path, absolute path) of stdlib .py files, sorted, without tests or site-packages."""
  root = sysconfig.get_paths()["stdlib"]
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS]
    rel_dir = os.path.relpath(dirpath, root)
    for filename in filenames:
      # _sysconfigdata*.py records this machine's build paths, not library source.
      if filename.endswith(".py") and not filename.startswith("_sysconfigdata"):
        rel = os.path.normpath(os.path.join(rel_dir, filename)).replace(os.sep, "/")
        found.append((rel, os.path.join(dirpath, filename)))
  found.sort()
  return found


def load_stdlib_corpus(max_bytes: int = 0) -> Corpus:
  """The embedded default corpus: one document per stdlib .py file that decodes as UTF-8."""
  named = []
  for rel, path in stdlib_files():
    with open(path, "rb") as f:
      raw = f.read()
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      continue
    if text:
      named.append((rel, text))
  if not named:
    raise ValueError(f"found no Python source under {sysconfig.get_paths()['stdlib']}; "
                     "pass --config.data.data=PATH to train on your own text")
  named, n_bytes = _take_bytes(named, max_bytes)
  version = "python-%d.%d.%d" % sys.version_info[:3]
  name = f"stdlib:{version}" + (f":max{max_bytes}" if max_bytes > 0 else "")
  return Corpus(documents=[t for _, t in named], name=name,
                fingerprint=_fingerprint(named, extra=version),
                n_documents=len(named), n_bytes=n_bytes)


def _expand_one(spec: str) -> list[str]:
  path = os.path.expanduser(spec)
  if any(ch in path for ch in "*?["):
    return sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
  if os.path.isdir(path):
    found = []
    for dirpath, _, filenames in os.walk(path):
      found.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(USER_SUFFIXES))
    return sorted(found)
  if os.path.isfile(path):
    return [path]
  return []


def expand_data_spec(data: str) -> list[str]:
  """Files named by a path, directory, glob, or a comma-separated list of those (deduplicated)."""
  specs = [s.strip() for s in data.split(",") if s.strip()]
  files, seen, missing = [], set(), []
  for spec in specs:
    matched = _expand_one(spec)
    if not matched:
      missing.append(spec)
    for path in matched:
      key = os.path.realpath(path)
      if key not in seen:
        seen.add(key)
        files.append(path)
  if missing:
    raise FileNotFoundError(
        f"no data files match {missing!r} (from --config.data.data={data!r}); pass an existing "
        f"file, a directory containing {'/'.join(USER_SUFFIXES)} files, a glob such as "
        "'data/*.txt', or leave it empty to use the embedded Python-stdlib corpus")
  return files


def _read_text(path: str) -> str:
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not valid UTF-8 ({e}); convert it to UTF-8 "
                     "(e.g. `iconv -t utf-8`) or leave it out of --config.data.data") from None


def read_jsonl(path: str, field: str) -> Iterator[str]:
  """Yields `obj[field]` for each non-blank line of a .jsonl file."""
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not valid UTF-8 ({e})") from None
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not a JSON object ({e}); .jsonl files need one "
                         "JSON object per line") from None
      if not isinstance(obj, dict) or field not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}:{line_no}: no field {field!r} (found {keys}); set "
                         "--config.data.jsonl_field to the field that holds the text")
      text = obj[field]
      if not isinstance(text, str):
        raise ValueError(f"{path}:{line_no}: field {field!r} is {type(text).__name__}, "
                         "expected a string")
      yield text


class UserDocuments:
  """The user's files as a lazy sequence of documents, read again on every pass.

  A .jsonl line or a whole other file is one document (so memory is bounded by the largest
  document, not the corpus); empty ones are skipped; with max_bytes > 0 the stream stops
  once that many UTF-8 bytes have been yielded (whole documents, like `_take_bytes`).
  """

  def __init__(self, files: Sequence[str], jsonl_field: str = "text", max_bytes: int = 0):
    self.files, self.jsonl_field, self.max_bytes = list(files), jsonl_field, max_bytes
    self._count = None

  def _all(self) -> Iterator[str]:
    for path in self.files:
      if path.endswith(".jsonl"):
        yield from (t for t in read_jsonl(path, self.jsonl_field) if t)
      else:
        text = _read_text(path)
        if text:
          yield text

  def __iter__(self) -> Iterator[str]:
    total = 0
    for text in self._all():
      if self.max_bytes > 0 and total >= self.max_bytes:
        return
      yield text
      if self.max_bytes > 0:
        total += len(text.encode("utf-8"))

  def __len__(self) -> int:
    if self._count is None:
      self._count = sum(1 for _ in self)
    return self._count


def load_user_corpus(data: str, jsonl_field: str = "text", max_bytes: int = 0) -> Corpus:
  """Documents from the user's files (`UserDocuments`), fingerprinted in one streaming pass."""
  files = expand_data_spec(data)
  documents = UserDocuments(files, jsonl_field, max_bytes)
  stats = dict(n=0, bytes=0)

  def counted():
    for text in documents:
      stats["n"] += 1
      stats["bytes"] += len(text.encode("utf-8"))
      yield "", text

  # Content only (not paths), so the same text in another folder shares the cache.
  fingerprint = _fingerprint(counted(), extra="user")
  if not stats["n"]:
    raise ValueError(f"the corpus from --config.data.data={data!r} is empty ({len(files)} files, "
                     "no text); point it at files that contain text")
  documents._count = stats["n"]  # pylint: disable=protected-access
  name = f"data:{data}" + (f":max{max_bytes}" if max_bytes > 0 else "")
  return Corpus(documents=documents, name=name, fingerprint=fingerprint,
                n_documents=stats["n"], n_bytes=stats["bytes"])


def load_corpus(data_config) -> Corpus:
  """The corpus a DataConfig names: `data` empty means the embedded stdlib corpus."""
  if data_config.data:
    corpus = load_user_corpus(data_config.data, data_config.jsonl_field,
                              data_config.max_corpus_bytes)
  else:
    corpus = load_stdlib_corpus(data_config.max_corpus_bytes)
  logging.info("corpus %s: %d documents, %.2f MB, fingerprint %s", corpus.name,
               corpus.n_documents, corpus.n_bytes / 1e6, corpus.fingerprint[:12])
  return corpus


def _order_key(corpus: Corpus, i: int) -> bytes:
  return hashlib.sha256(f"{corpus.fingerprint}:{i}".encode()).digest()


def document_order(corpus: Corpus) -> list[int]:
  """A fixed pseudo-random order of document indices, from sha256(fingerprint, index).

  Hash-based rather than an RNG so it is identical across numpy/Python versions.
  """
  return sorted(range(corpus.n_documents), key=lambda i: _order_key(corpus, i))


class DocumentSubset:
  """The documents of a corpus whose index is (or is not) in `indices`, lazily, in order."""

  def __init__(self, documents, indices: set, inside: bool):
    self.documents, self.indices, self.inside = documents, indices, inside

  def __iter__(self) -> Iterator[str]:
    for i, doc in enumerate(self.documents):
      if (i in self.indices) == self.inside:
        yield doc


def validation_indices(corpus: Corpus, val_fraction: float) -> set:
  """The validation documents' indices: the last `val_fraction` of `document_order` (at
  least one, never all), found with a heap so memory grows with the validation set only."""
  n = corpus.n_documents
  n_val = min(n - 1, max(1, round(n * val_fraction)))
  return set(heapq.nlargest(n_val, range(n), key=lambda i: _order_key(corpus, i)))


def split_views(corpus: Corpus, val_fraction: float):
  """(train, validation) as lazy re-iterable views that keep corpus order; `split_corpus`
  without holding the documents (except a single-document corpus, which is cut in two)."""
  _check_val_fraction(val_fraction)
  if corpus.n_documents == 1:
    return _split_single_document(next(iter(corpus.documents)), val_fraction)
  val_ids = validation_indices(corpus, val_fraction)
  return (DocumentSubset(corpus.documents, val_ids, False),
          DocumentSubset(corpus.documents, val_ids, True))


def _check_val_fraction(val_fraction: float) -> None:
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}; "
                     "set --config.data.val_fraction=0.02 or similar")


def _split_single_document(text: str, val_fraction: float) -> tuple[list[str], list[str]]:
  """A one-document corpus cut at the line boundary nearest 1 - val_fraction."""
  cut = int(len(text) * (1.0 - val_fraction))
  newline = text.rfind("\n", 0, cut)
  cut = newline + 1 if newline > 0 else cut
  if cut <= 0 or cut >= len(text):
    raise ValueError("the corpus is a single document too short to split into train and "
                     "validation; add more text")
  logging.info("single-document corpus: validation is its last %d characters", len(text) - cut)
  return [text[:cut]], [text[cut:]]


def split_corpus(corpus: Corpus, val_fraction: float) -> tuple[list[str], list[str]]:
  """Disjoint (train, validation) documents as lists; each keeps corpus order.

  The last `val_fraction` of `document_order` (at least one document) is validation. A
  single-document corpus is cut at the line boundary nearest the same fraction instead.
  """
  train, val = split_views(corpus, val_fraction)
  return list(train), list(val)
