"""Labelled text for sequence classification / regression: jsonl or the embedded set.

A row is {"text": str, "label": L}. Labels are class ids (ints >= 0), class names
(strings, mapped to ids in sorted order) or numbers with a fractional part / written as
floats (regression; one output). One file holds one kind. A row is encoded as
[bos] text [eos], cut to seq_len, padded with pad (segment id 0).

The embedded set (data="" ): which embedded task (infer/eval/tasks.py) a prompt belongs
to, with the tasks' own train / held-out prompt split, generated the same on any machine.
"""

import dataclasses
import hashlib
import json
from typing import Sequence

import numpy as np

from model.files import read_jsonl_objects
from train.data import tasks as tasks_lib
from train.data.rows import RowDataset

_EXAMPLE = '{"text": "a great film", "label": "positive"}'
ROW_KEYS = ("inputs", "segment_ids", "labels", "label_weights")


def _short(value, limit: int = 60) -> str:
  text = json.dumps(value, ensure_ascii=False)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def read_labelled_jsonl(path: str) -> list[dict]:
  """Checked rows of a {text, label} jsonl; errors name the file and line."""
  rows, kinds = [], {}
  for where, obj in read_jsonl_objects(path, "labelled rows", _EXAMPLE):
    if not isinstance(obj, dict) or "text" not in obj or "label" not in obj:
      raise ValueError(f"{where}: expected an object with 'text' and 'label', like {_EXAMPLE}; "
                       f"got {_short(obj)}")
    text, label = obj["text"], obj["label"]
    if not isinstance(text, str) or not text:
      raise ValueError(f"{where}: 'text' must be a non-empty string, got {_short(text)}")
    kind = label_kind(label)
    if kind is None:
      raise ValueError(f"{where}: 'label' must be a class id (int >= 0), a class name (string) "
                       f"or a number (regression), got {_short(label)}")
    kinds.setdefault(kind, where)
    rows.append({"text": text, "label": label})
  if len(kinds) > 1:
    first = ", ".join(f"{k} labels from {w}" for k, w in kinds.items())
    raise ValueError(f"{path} mixes label kinds ({first}); use one kind per file")
  return rows


def label_kind(label) -> str | None:
  if isinstance(label, bool):
    return None
  if isinstance(label, int):
    return "id" if label >= 0 else None
  if isinstance(label, float):
    return "float" if np.isfinite(label) else None
  if isinstance(label, str) and label:
    return "name"
  return None


@dataclasses.dataclass(frozen=True)
class LabelSpace:
  """How labels map to model outputs: class names (index = id) or regression."""
  regression: bool
  names: tuple[str, ...]  # class names; ("0", "1", ...) for integer ids; () for regression

  @property
  def n_outputs(self) -> int:
    return 1 if self.regression else len(self.names)

  def to_dict(self) -> dict:
    return {"regression": self.regression, "names": list(self.names)}


def label_space(rows: Sequence[dict], task: str = "auto") -> LabelSpace:
  kinds = {label_kind(r["label"]) for r in rows}
  if task == "regression" or (task == "auto" and kinds == {"float"}):
    if "name" in kinds:
      raise ValueError("classify.task=regression needs numeric labels, got class names")
    return LabelSpace(True, ())
  if "float" in kinds:
    bad = [r["label"] for r in rows if isinstance(r["label"], float)
           and not float(r["label"]).is_integer()][:3]
    if bad:
      raise ValueError(f"classification labels must be ints or names, got {bad}; set "
                       "--config.classify.task=regression for numeric targets")
  if kinds <= {"id", "float"}:
    return LabelSpace(False, tuple(str(i) for i in range(int(max(r["label"] for r in rows)) + 1)))
  return LabelSpace(False, tuple(sorted({str(r["label"]) for r in rows})))


def label_value(space: LabelSpace, label):
  if space.regression:
    return float(label)
  if isinstance(label, str):
    if label not in space.names:
      raise ValueError(f"label {label!r} was not seen in training (known: {list(space.names)})")
    return space.names.index(label)
  return int(label)


def encode_rows(tokenizer, rows: Sequence[dict], space: LabelSpace, seq_len: int) -> dict:
  """[n, seq_len] inputs / segment_ids and [n, 1] labels / label_weights (numpy)."""
  n = len(rows)
  inputs = np.full((n, seq_len), tokenizer.pad_id, np.int32)
  segment_ids = np.zeros((n, seq_len), np.int32)
  texts = [r["text"] for r in rows]
  for i, ids in enumerate(tokenizer.encode_batch(texts)):
    ids = ([tokenizer.bos_id] + list(ids) + [tokenizer.eos_id])[:seq_len]
    inputs[i, :len(ids)] = ids
    segment_ids[i, :len(ids)] = 1
  dtype = np.float32 if space.regression else np.int32
  labels = np.asarray([label_value(space, r["label"]) for r in rows], dtype).reshape(n, 1)
  return {"inputs": inputs, "segment_ids": segment_ids, "labels": labels,
          "label_weights": np.ones((n, 1), np.float32)}


class LabelledDataset(RowDataset):
  """Encoded rows with TokenDataset's stateless batching (one example per row)."""

  def __init__(self, rows: dict, name: str = "labelled"):
    self.rows = {k: np.asarray(rows[k]) for k in ROW_KEYS}
    self.name = name
    self.n_windows, self.seq_len = self.rows["inputs"].shape
    self.n_tokens = int(self.rows["segment_ids"].sum())
    self.tokens_per_epoch = self.n_windows * self.seq_len
    self._perms = {}
    if self.n_windows == 0:
      raise ValueError(f"the {name} split has no labelled rows; add rows to the jsonl")

  def check_batch_size(self, batch_size: int) -> None:
    if self.n_windows < batch_size:
      raise ValueError(f"the {self.name} split has {self.n_windows} labelled rows but one batch "
                       f"needs {batch_size}; add rows or lower --config.train.batch_size")

  def eval_batches(self, batch_size: int, n_batches: int | None = None, process_index: int = 0,
                   process_count: int = 1) -> list[dict]:
    """Every row once (n_batches None) or the first n_batches batches; the last batch is
    padded with rows of zero weight."""
    n_full = -(-self.n_windows // batch_size)
    n_batches = n_full if n_batches is None else min(n_batches, n_full)
    pad = n_batches * batch_size - self.n_windows
    rows = self.padded_rows(pad) if pad > 0 else self.rows
    local = self._local_rows(batch_size, process_index, process_count)
    return [{k: v[i * batch_size + local] for k, v in rows.items()} for i in range(n_batches)]


def embedded_rows(split: str, n_per_task: int, seed: int = 0) -> list[dict]:
  """Which embedded task a prompt belongs to: {"text": prompt, "label": task}."""
  rows = []
  for task in tasks_lib.TASK_NAMES:
    rows += [{"text": r["prompt"], "label": task}
             for r in tasks_lib.examples(task, split, n_per_task, seed)]
  return rows


def split_rows(rows: Sequence[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
  """A stable hash of the text puts each row in train or validation."""
  train, val = [], []
  for r in rows:
    h = int(hashlib.sha256(r["text"].encode()).hexdigest()[:8], 16) / 2**32
    (val if h < val_fraction else train).append(r)
  if not val:
    val = train[-1:]
  return train, val


def build_labelled_datasets(tokenizer, data_config, task: str = "auto", seed: int = 0):
  """(train_ds, val_ds, info) for data.kind="labelled"; info["labels"] is the label space."""
  if data_config.data:
    rows = read_labelled_jsonl(data_config.data)
    train_rows, val_rows = split_rows(rows, data_config.val_fraction)
    source = data_config.data
  else:
    train_rows = embedded_rows("train", data_config.sft_train_per_task, seed)
    val_rows = embedded_rows("heldout", data_config.sft_heldout_per_task, seed)
    source = "embedded task prompts"
  space = label_space(train_rows + val_rows, task)
  seq_len = data_config.seq_len
  train_ds = LabelledDataset(encode_rows(tokenizer, train_rows, space, seq_len), "train")
  val_ds = LabelledDataset(encode_rows(tokenizer, val_rows, space, seq_len), "val")
  info = {"source": source, "n_train": len(train_rows), "n_val": len(val_rows),
          "labels": space.to_dict(), "seq_len": seq_len}
  return train_ds, val_ds, info


def fit_label_config(config, info: dict):
  """Sets classify.n_labels from the data (or checks a configured one)."""
  space = info["labels"]
  n = 1 if space["regression"] else len(space["names"])
  task = "regression" if space["regression"] else "classification"
  c = config.classify
  if c.n_labels and c.n_labels != n:
    raise ValueError(f"classify.n_labels={c.n_labels} but the data has {n} "
                     f"{'output' if space['regression'] else 'classes'}; leave it at 0")
  return dataclasses.replace(config, classify=dataclasses.replace(c, n_labels=n, task=task))
