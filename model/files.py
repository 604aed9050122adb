"""Atomic file writes: a temporary file in the target folder, then os.replace.

An interrupt or crash leaves either the old file or the new one, never half of one.
"""

import json
import os
import tempfile

import numpy as np


def _write_atomic(path: str, suffix: str, mode: str, write) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json_atomic(path: str, payload) -> None:
  _write_atomic(path, ".json", "w", lambda f: json.dump(payload, f, indent=2, sort_keys=True))


def save_npy_atomic(path: str, array: np.ndarray) -> None:
  _write_atomic(path, ".npy", "wb", lambda f: np.save(f, array))


def read_jsonl_objects(path: str, what: str, example: str) -> list[tuple[str, object]]:
  """(where, parsed value) per non-blank line of a jsonl file, where = "line N of PATH".

  A missing file, invalid JSON or an empty file is an error naming the file (and line) and
  what the file should hold (`what`, e.g. "SFT rows"; `example`, one valid line).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file; pass a .jsonl file of {what}")
  rows = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"line {line_no} of {path}"
      try:
        rows.append((where, json.loads(line)))
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); write one JSON "
                         "object per line") from None
  if not rows:
    raise ValueError(f"{path} has no rows; add lines like {example}")
  return rows
