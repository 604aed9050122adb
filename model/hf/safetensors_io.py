"""Streaming safetensors reading and writing, one tensor at a time, float32 and bfloat16.

A checkpoint is either `model.safetensors` or shards listed by `model.safetensors.index.json`
({"weight_map": {tensor name: shard file}}). Reading memory-maps each file and returns
zero-copy numpy views (bfloat16 as `ml_dtypes.bfloat16`, which numpy lacks), so a model
larger than host memory's comfort is converted one slice at a time. Writing streams
tensors into shards of at most `max_shard_bytes` and writes the index when there is more
than one shard. The format (an 8-byte little-endian header size, a JSON header of
{name: {dtype, shape, data_offsets}}, then the raw bytes) is small enough to handle here
directly, which is what lets bfloat16 pass through numpy.
"""

import json
import mmap
import os
import struct
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_FLOATS = (DTYPES["F64"], DTYPES["F32"], DTYPES["F16"], DTYPES["BF16"])
SAVE_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


class _File:
  """One memory-mapped .safetensors file: its header and zero-copy tensor views."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header "
                         "size); re-copy it")
      (n,) = struct.unpack("<Q", raw)
      try:
        header = json.loads(f.read(n))
      except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path} has a damaged safetensors header; re-copy it") from None
      self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(
          path) > 8 + n else None
    self.start = 8 + n
    header.pop("__metadata__", None)
    self.header = header

  def tensor(self, name: str) -> np.ndarray:
    entry = self.header[name]
    if entry["dtype"] not in DTYPES:
      raise ValueError(f"{self.path}: tensor {name} has dtype {entry['dtype']}, which this "
                       f"reader does not handle (known: {sorted(DTYPES)})")
    dtype = DTYPES[entry["dtype"]]
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end - begin != int(np.prod(shape)) * dtype.itemsize:
      raise ValueError(f"{self.path}: tensor {name} is damaged (its byte range does not "
                       "match its shape); re-copy the file")
    if end == begin:
      return np.zeros(shape, dtype)
    return np.frombuffer(self._map, dtype, count=int(np.prod(shape)),
                         offset=self.start + begin).reshape(shape)


class Reader:
  """All tensors of a Hugging Face model directory, by name; nothing is read until asked."""

  def __init__(self, directory: str):
    self.directory = directory
    index_path = os.path.join(directory, INDEX_FILE)
    single = os.path.join(directory, SINGLE_FILE)
    if os.path.exists(index_path):
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path} has no 'weight_map' object; re-copy it")
      files = sorted(set(weight_map.values()))
    elif os.path.exists(single):
      files, weight_map = [SINGLE_FILE], None
    else:
      raise FileNotFoundError(
          f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}; pass a Hugging Face model "
          "directory with safetensors weights (PyTorch .bin checkpoints are not read: convert "
          "them with transformers' save_pretrained(..., safe_serialization=True))")
    self._files = {}
    for name in files:
      path = os.path.join(directory, name)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is listed in {INDEX_FILE} but missing; copy every "
                                "shard of the checkpoint")
      self._files[name] = _File(path)
    self._where = {}
    for name, file in self._files.items():
      for tensor in file.header:
        self._where[tensor] = file
    if weight_map is not None:
      missing = sorted(t for t in weight_map if t not in self._where)
      if missing:
        raise ValueError(f"{INDEX_FILE} lists tensors its shards lack: {missing[:5]}; "
                         "re-copy the checkpoint")

  def names(self) -> list[str]:
    return sorted(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def shape(self, name: str) -> tuple:
    return tuple(self._where[name].header[name]["shape"])

  def dtype_name(self, name: str) -> str:
    return self._where[name].header[name]["dtype"]

  def get(self, name: str) -> np.ndarray:
    """A zero-copy view (any dtype); convert slices with `.astype(np.float32)`."""
    if name not in self._where:
      raise KeyError(f"tensor {name!r} is not in the checkpoint at {self.directory}")
    return self._where[name].tensor(name)


def _header_entry(array: np.ndarray, offset: int) -> dict:
  if array.dtype not in _NAMES:
    raise ValueError(f"cannot write dtype {array.dtype} to safetensors")
  return {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
          "data_offsets": [offset, offset + array.nbytes]}


def _write_file(path: str, tensors: list[tuple[str, np.ndarray]], metadata: dict) -> None:
  header, offset = {"__metadata__": metadata}, 0
  for name, array in tensors:
    header[name] = _header_entry(array, offset)
    offset += array.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for _, array in tensors:
      f.write(np.ascontiguousarray(array).tobytes())
  os.replace(tmp, path)


def write(directory: str, tensors: Iterable[tuple[str, np.ndarray]], dtype: str = "float32",
          max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes (name, array) pairs, cast to `dtype`, as one file or as shards plus an index.

  Tensors are consumed lazily and each shard is written as soon as it is full, so at most
  one shard's worth of converted tensors is held. Returns the files written.
  """
  if dtype not in SAVE_DTYPES:
    raise ValueError(f"dtype {dtype!r} is not one of {sorted(SAVE_DTYPES)}")
  target = SAVE_DTYPES[dtype]
  os.makedirs(directory, exist_ok=True)
  shards, current, size, weight_map, total = [], [], 0, {}, 0
  seen = set()

  def flush():
    nonlocal current, size
    if current:
      name = f"part-{len(shards) + 1:05d}.safetensors"
      _write_file(os.path.join(directory, name), current, {"format": "pt"})
      shards.append((name, [t for t, _ in current]))
      current, size = [], 0

  for name, array in tensors:
    if name in seen:
      raise ValueError(f"tensor {name!r} written twice")
    seen.add(name)
    array = np.asarray(array)
    if array.dtype in _FLOATS:
      array = array.astype(target)
    if current and size + array.nbytes > max_shard_bytes:
      flush()
    current.append((name, array))
    size += array.nbytes
    total += array.nbytes
  flush()
  if len(shards) == 1:
    os.replace(os.path.join(directory, shards[0][0]), os.path.join(directory, SINGLE_FILE))
    return [SINGLE_FILE]
  n = len(shards)
  files = []
  for i, (name, names) in enumerate(shards):
    final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
    os.replace(os.path.join(directory, name), os.path.join(directory, final))
    files.append(final)
    weight_map.update({t: final for t in names})
  with open(os.path.join(directory, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
              f, indent=2)
  return files


def iter_tensors(reader: Reader) -> Iterator[tuple[str, np.ndarray]]:
  for name in reader.names():
    yield name, reader.get(name)
