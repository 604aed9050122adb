"""Supervised fine-tuning data: jsonl or embedded tasks -> chat text -> weighted tokens -> batches.

A row is {"prompt", "response"} or {"messages": [...]} (ending with the assistant's reply),
optionally with "task" and "answer" for exact-match evaluation. An example is rendered by a
chat template, tokenized piece by piece, and carries loss weight 1 on the assistant's tokens
and the final eos, 0 on the prompt. Examples are packed (or padded) into rows once, in
memory; `SftDataset` serves them with the same stateless batching as `TokenDataset`.
"""

import hashlib
import json
import os
from typing import Mapping, Sequence

import numpy as np
from absl import logging

from model import chat
from model.files import read_jsonl_objects
from train.data import packing
from train.data import tasks as tasks_lib
from train.data.rows import RowDataset

_ROW_HINT = ("expected an object with 'prompt' and 'response' or 'messages' (a list of "
             "{\"role\", \"content\"} ending with the assistant's reply)")


def _short(value, limit: int = 80) -> str:
  text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def normalize_row(obj, where: str = "row") -> dict:
  """A checked copy of one row with "messages" filled in; errors start with `where`."""
  if not isinstance(obj, dict):
    raise ValueError(f"{where}: {_ROW_HINT}, got {_short(obj)}")
  row = dict(obj)
  if "messages" in obj:
    try:
      chat.validate_messages(obj["messages"], final_assistant=True)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    row["messages"] = [dict(m) for m in obj["messages"]]
  elif "prompt" in obj and "response" in obj:
    for key in ("prompt", "response"):
      if not isinstance(obj[key], str):
        raise ValueError(f"{where}: '{key}' must be a string, got {_short(obj[key])}")
    row["messages"] = row_messages(obj)
  else:
    raise ValueError(f"{where}: {_ROW_HINT}, got keys {sorted(obj)}")
  if "answer" in row:
    if not isinstance(row["answer"], (str, int, float)) or isinstance(row["answer"], bool):
      raise ValueError(f"{where}: 'answer' must be a string or a number, got "
                       f"{_short(row['answer'])}")
    row["answer"] = str(row["answer"])
  if "task" in row and not isinstance(row["task"], str):
    raise ValueError(f"{where}: 'task' must be a string, got {_short(row['task'])}")
  return row


def read_jsonl(path: str) -> list[dict]:
  """Rows of an SFT jsonl file (blank lines skipped), each checked by `normalize_row`."""
  lines = read_jsonl_objects(path, "SFT rows (or an empty data path for the embedded tasks)",
                             '{"prompt": "What is 2 + 2?", "response": "4"}')
  return [normalize_row(obj, where) for where, obj in lines]


def row_messages(row: Mapping) -> list[dict]:
  """The conversation of a row, from "messages" or from "prompt" and "response"."""
  if "messages" in row:
    return list(row["messages"])
  return chat.prompt_messages(row["prompt"]) + [{"role": "assistant", "content": row["response"]}]


def reference_answer(row: Mapping) -> str:
  """What exact-match evaluation compares against: "answer", else the final reply."""
  return row["answer"] if "answer" in row else row_messages(row)[-1]["content"]


def prompt_text(template: chat.ChatTemplate, row: Mapping) -> str:
  """The text a decoder is given for this row (its conversation without the final reply)."""
  return template.render_prompt(row_messages(row))


def encode_example(tokenizer, template: chat.ChatTemplate,
                   row: Mapping) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32, loss weights float32): bos?, rendered pieces, eos.

  Pieces are tokenized separately and concatenated, so the prompt/response boundary is
  exact and the prompt tokens equal `chat.encode_prompt`'s. Weight 1 on assistant
  replies (with their turn suffix) and the eos, 0 elsewhere.
  """
  ids: list[int] = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []
  weights: list[float] = [0.0] * len(ids)
  for text, is_target in template.render_pairs(row_messages(row)):
    piece = tokenizer.encode(text)
    ids.extend(piece)
    weights.extend([1.0 if is_target else 0.0] * len(piece))
  if tokenizer.eos_id >= 0:
    ids.append(tokenizer.eos_id)
    weights.append(1.0)
  return np.asarray(ids, np.int32), np.asarray(weights, np.float32)


class SftDataset(RowDataset):
  """Rows of (packed or padded) examples with TokenDataset's stateless batching.

  `batch(seed, step, ...)` returns this process's rows of global batch `step` as int32
  inputs, targets, segment_ids, positions and float32 weights, each [b, seq_len]; epochs
  visit every row once in an order seeded by (seed, epoch).
  """

  def __init__(self, rows: Mapping[str, np.ndarray], name: str = "sft"):
    missing = [k for k in packing.ROW_KEYS if k not in rows]
    if missing:
      raise ValueError(f"SFT rows need keys {list(packing.ROW_KEYS)}; missing {missing} (build "
                       "them with train.data.packing.pack or pad_rows)")
    self.rows = {k: np.asarray(rows[k]) for k in packing.ROW_KEYS}
    shapes = {k: v.shape for k, v in self.rows.items()}
    if len(set(shapes.values())) != 1 or self.rows["inputs"].ndim != 2:
      raise ValueError(f"SFT rows must all be [n_rows, seq_len], got {shapes}")
    self.name = name
    self.n_windows, self.seq_len = self.rows["inputs"].shape
    self.n_tokens = int(np.count_nonzero(self.rows["segment_ids"]))
    self.tokens_per_epoch = self.n_windows * self.seq_len
    self.target_tokens_per_epoch = float(self.rows["weights"].sum())
    self._perms = {}
    self.check_batch_size(1)

  def check_batch_size(self, batch_size: int) -> None:
    """Raises a ValueError naming the fix if one batch needs more rows than exist."""
    if self.n_windows == 0:
      raise ValueError(f"the {self.name} SFT split has no rows: no examples, or every one was "
                       f"dropped for having no response token within seq_len {self.seq_len}; "
                       "add examples or raise --config.data.seq_len")
    if self.n_windows < batch_size:
      raise ValueError(
          f"the {self.name} SFT split has {self.n_windows} rows of seq_len {self.seq_len}, but "
          f"one batch needs {batch_size}; add examples (more rows in the jsonl or more per "
          "task), or lower --config.train.batch_size or --config.data.seq_len (packed rows "
          "then hold fewer examples each)")



def make_rows(tokenizer, template: chat.ChatTemplate, rows: Sequence[Mapping], seq_len: int,
              pack: bool = True) -> tuple[dict, dict]:
  """Rows -> encoded examples -> packed (or padded) arrays and their stats."""
  encoded = [encode_example(tokenizer, template, row) for row in rows]
  pad_id = max(0, tokenizer.pad_id)
  if pack:
    return packing.pack(encoded, seq_len, pad_id)
  return packing.pad_rows(encoded, seq_len, pad_id)


def split_rows(rows: Sequence[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
  """(train, val): val is the ceil(val_fraction*n) rows of smallest content hash (>= 1)."""
  if len(rows) < 2:
    raise ValueError(f"an SFT file needs at least 2 rows (train and validation), got {len(rows)}")
  n_val = min(len(rows) - 1, max(1, int(np.ceil(val_fraction * len(rows)))))
  keys = [hashlib.sha256(json.dumps(r["messages"], sort_keys=True).encode()).hexdigest()
          for r in rows]
  order = sorted(range(len(rows)), key=lambda i: (keys[i], i))
  val = set(order[:n_val])
  return ([r for i, r in enumerate(rows) if i not in val],
          [r for i, r in enumerate(rows) if i in val])


def _task_rows(n_train: int, n_val: int, seed: int,
               task_names: Sequence[str]) -> tuple[list[dict], list[dict]]:
  """Per task, n_train train-split examples and up to n_val others with unseen prompts.

  A task with fewer distinct train prompts than n_train + n_val gives 1/20 of them (at
  least 1, at most n_val) to val and repeats the rest to make n_train.
  """
  train, val = [], []
  for task in task_names:
    rows = tasks_lib.examples(task, "train", n_train + n_val, seed)
    distinct = list({r["prompt"]: r for r in rows}.values())
    if len(distinct) >= n_train + n_val:
      train.extend(distinct[:n_train])
      val.extend(distinct[n_train:n_train + n_val])
      continue
    n_v = min(n_val, max(1, len(distinct) // 20)) if len(distinct) > 1 else 0
    pool = distinct[:len(distinct) - n_v]
    train.extend(pool[i % len(pool)] for i in range(n_train))
    val.extend(distinct[len(distinct) - n_v:])
  order = np.random.default_rng(np.random.SeedSequence([seed & (2**63 - 1), 2])).permutation(
      len(train))
  return [train[i] for i in order], val


def build_sft_datasets(tokenizer, template: chat.ChatTemplate | str, seq_len: int,
                       data_path: str = "", pack: bool = True, n_train_per_task: int = 2000,
                       n_heldout_per_task: int = 50, seed: int = 0, val_fraction: float = 0.05,
                       task_names: Sequence[str] = tasks_lib.TASK_NAMES):
  """-> (train_ds, val_ds, heldout_rows, info).

  data_path "" uses the embedded tasks: training on the train split, validation loss on
  further train-split examples (round(val_fraction * n_train_per_task) per task, not seen
  in training) and exact-match evaluation on the heldout split. Otherwise the jsonl is
  split by content hash: val is a val_fraction slice and heldout rows are the val rows.
  info is JSON-able: source, counts, truncations, drops and packing efficiency.
  """
  if isinstance(template, str):
    template = chat.get_template(template)
  if not 0 < val_fraction < 1:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
  if data_path:
    train_rows, val_rows = split_rows(read_jsonl(data_path), val_fraction)
    heldout = list(val_rows)
    source = os.path.abspath(data_path)
  else:
    n_val = max(1, int(round(n_train_per_task * val_fraction)))
    train_rows, val_rows = _task_rows(n_train_per_task, n_val, seed, task_names)
    heldout = tasks_lib.mixture("heldout", n_heldout_per_task, seed, task_names)
    source = "tasks"
  train_arrays, train_stats = make_rows(tokenizer, template, train_rows, seq_len, pack)
  val_arrays, val_stats = make_rows(tokenizer, template, val_rows, seq_len, pack)
  train_ds = SftDataset(train_arrays, name="train")
  val_ds = SftDataset(val_arrays, name="val")
  info = dict(
      source=source, template=template.name, seq_len=seq_len, pack=pack, seed=seed,
      tasks=list(task_names) if source == "tasks" else [],
      n_train_examples=len(train_rows), n_val_examples=len(val_rows), n_heldout=len(heldout),
      train_rows=train_ds.n_windows, val_rows=val_ds.n_windows,
      truncated=train_stats["truncated"] + val_stats["truncated"],
      dropped=train_stats["dropped"] + val_stats["dropped"],
      packing_efficiency=train_stats["efficiency"],
      train_target_tokens=train_stats["target_tokens"], train=train_stats, val=val_stats)
  logging.info("SFT data from %s: %d train examples in %d rows (%.0f%% of slots used), %d val "
               "examples in %d rows, %d heldout", source, len(train_rows), train_ds.n_windows,
               100 * train_stats["efficiency"], len(val_rows), val_ds.n_windows, len(heldout))
  return train_ds, val_ds, heldout, info
