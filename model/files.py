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
