"""Seq2seq data: {"source", "target"} jsonl or the embedded number-words set -> padded rows.

One example per row (encoder-decoder rows are not packed): the source is tokenized and
right-padded to `source_len` ("source", "source_valid" 1/0); the decoder reads the start
token (model.encoder_decoder.DECODER_START_ID) then the target ("inputs") and predicts
the target then EOS ("targets", "weights" 1 there, 0 on padding), right-padded to
`seq_len`. Sources longer than source_len keep
their start; targets longer than seq_len - 1 lose their end (and EOS); both are counted
and logged. `Seq2SeqDataset` serves the rows with TokenDataset's stateless batching.
"""

import hashlib
import json
import os
from typing import Mapping, Sequence

import numpy as np
from absl import logging

from model.encoder_decoder import DECODER_START_ID
from model.files import read_jsonl_objects
from train.data import number_words
from train.data.rows import RowDataset

ROW_KEYS = ("source", "source_valid", "inputs", "targets", "weights")
_EXAMPLE = '{"source": "en->pt: forty-two", "target": "quarenta e dois"}'


def normalize_row(obj, where: str) -> dict:
  """A checked row with string "source" and "target"; errors start with `where`."""
  if not isinstance(obj, dict) or "source" not in obj or "target" not in obj:
    got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{where}: expected an object with 'source' and 'target' strings, "
                     f"e.g. {_EXAMPLE}; got {got}")
  for key in ("source", "target"):
    if not isinstance(obj[key], str):
      raise ValueError(f"{where}: '{key}' must be a string, got {json.dumps(obj[key])[:60]}")
  if not obj["source"]:
    raise ValueError(f"{where}: 'source' is empty; every example needs some input text")
  return dict(obj)


def read_jsonl(path: str) -> list[dict]:
  """Rows of a seq2seq jsonl file, each checked (file and line number in every error)."""
  return [normalize_row(obj, where)
          for where, obj in read_jsonl_objects(path, "seq2seq rows", _EXAMPLE)]


def encode_rows(tokenizer, rows: Sequence[Mapping], source_len: int,
                seq_len: int) -> tuple[dict, dict]:
  """Rows -> padded arrays (ROW_KEYS, each [n, source_len] or [n, seq_len]) and stats."""
  if source_len < 1 or seq_len < 2:
    raise ValueError(f"seq2seq needs source_len >= 1 and seq_len >= 2, got {source_len} and "
                     f"{seq_len}")
  n, pad = len(rows), max(0, tokenizer.pad_id)
  out = dict(source=np.full((n, source_len), pad, np.int32),
             source_valid=np.zeros((n, source_len), np.int32),
             inputs=np.full((n, seq_len), pad, np.int32),
             targets=np.full((n, seq_len), pad, np.int32),
             weights=np.zeros((n, seq_len), np.float32))
  start, eos = DECODER_START_ID, tokenizer.eos_id
  cut_source = cut_target = 0
  for i, row in enumerate(rows):
    src = tokenizer.encode(row["source"])
    if len(src) > source_len:
      src, cut_source = src[:source_len], cut_source + 1
    if not src:
      raise ValueError(f"row {i}: source {row['source']!r} encodes to no tokens")
    tgt = tokenizer.encode(row["target"]) + ([eos] if eos >= 0 else [])
    if len(tgt) > seq_len:
      tgt, cut_target = tgt[:seq_len], cut_target + 1
    out["source"][i, :len(src)] = src
    out["source_valid"][i, :len(src)] = 1
    out["inputs"][i, :len(tgt)] = [start] + tgt[:-1]
    out["targets"][i, :len(tgt)] = tgt
    out["weights"][i, :len(tgt)] = 1.0
  if cut_source or cut_target:
    logging.warning("seq2seq: %d sources cut to source_len=%d and %d targets cut to seq_len=%d "
                    "(of %d examples); raise --config.data.source_len / seq_len to keep them",
                    cut_source, source_len, cut_target, seq_len, n)
  stats = dict(n_examples=n, truncated_sources=cut_source, truncated_targets=cut_target,
               target_tokens=float(out["weights"].sum()),
               source_tokens=int(out["source_valid"].sum()))
  return out, stats


class Seq2SeqDataset(RowDataset):
  """Padded seq2seq rows with TokenDataset's stateless batching (`batch`, `eval_batches`)."""

  def __init__(self, rows: Mapping[str, np.ndarray], name: str = "seq2seq"):
    missing = [k for k in ROW_KEYS if k not in rows]
    if missing:
      raise ValueError(f"seq2seq rows need keys {list(ROW_KEYS)}; missing {missing}")
    self.rows = {k: np.asarray(rows[k]) for k in ROW_KEYS}
    self.name = name
    self.n_windows, self.seq_len = self.rows["inputs"].shape
    self.source_len = self.rows["source"].shape[1]
    self.n_tokens = int(self.rows["weights"].sum())
    self.tokens_per_epoch = self.n_windows * self.seq_len
    self._perms = {}
    if self.n_windows == 0:
      raise ValueError(f"the {name} seq2seq split has no examples; add rows to the jsonl")

  def check_batch_size(self, batch_size: int) -> None:
    if self.n_windows < batch_size:
      raise ValueError(f"the {self.name} seq2seq split has {self.n_windows} examples but one "
                       f"batch needs {batch_size}; add examples or lower "
                       "--config.train.batch_size")



def split_rows(rows: Sequence[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
  """(train, val): val is the ceil(val_fraction * n) rows of smallest content hash."""
  if len(rows) < 2:
    raise ValueError(f"a seq2seq file needs at least 2 rows (train and validation), got "
                     f"{len(rows)}")
  n_val = min(len(rows) - 1, max(1, int(np.ceil(val_fraction * len(rows)))))
  keys = [hashlib.sha256(json.dumps([r["source"], r["target"]]).encode()).hexdigest()
          for r in rows]
  val = set(sorted(range(len(rows)), key=lambda i: (keys[i], i))[:n_val])
  return ([r for i, r in enumerate(rows) if i not in val],
          [r for i, r in enumerate(rows) if i in val])


def parse_directions(spec: str) -> tuple[str, ...]:
  """"all" or a comma list such as "pt->en,en->digits"."""
  if spec == "all":
    return number_words.DIRECTIONS
  directions = tuple(d.strip() for d in spec.split(",") if d.strip())
  bad = [d for d in directions if d not in number_words.DIRECTIONS]
  if bad or not directions:
    raise ValueError(f"--config.data.seq2seq_directions={spec!r}: unknown {bad or 'empty'}; "
                     f"use 'all' or a comma list of {number_words.DIRECTIONS}")
  return directions


def embedded_rows(n_train: int, n_heldout: int, seed: int, directions: str = "all",
                  max_number: int = number_words.MAX_NUMBER, val_fraction: float = 0.05):
  """(train, val, heldout) rows of the number-words set; val and train share the train
  numbers (val rows are not trained on), heldout numbers are never trained on."""
  dirs = parse_directions(directions)
  n_val = max(len(dirs), int(round(n_train * val_fraction)))
  rows = number_words.pairs("train", n_train + n_val, seed, dirs, max_number)
  heldout = number_words.pairs("heldout", n_heldout, seed, dirs, max_number)
  return rows[:n_train], rows[n_train:], heldout


def build_seq2seq_datasets(tokenizer, source_len: int, seq_len: int, data_path: str = "",
                           n_train: int = 20000, n_heldout: int = 200, seed: int = 0,
                           directions: str = "all", max_number: int = number_words.MAX_NUMBER,
                           val_fraction: float = 0.05):
  """-> (train_ds, val_ds, heldout_rows, info). data_path "" = the embedded number words."""
  if data_path:
    train_rows, val_rows = split_rows(read_jsonl(data_path), val_fraction)
    heldout, source = list(val_rows), os.path.abspath(data_path)
  else:
    train_rows, val_rows, heldout = embedded_rows(n_train, n_heldout, seed, directions,
                                                  max_number, val_fraction)
    source = "number_words"
  train_arrays, train_stats = encode_rows(tokenizer, train_rows, source_len, seq_len)
  val_arrays, val_stats = encode_rows(tokenizer, val_rows, source_len, seq_len)
  train_ds = Seq2SeqDataset(train_arrays, "train")
  val_ds = Seq2SeqDataset(val_arrays, "val")
  info = dict(source=source, kind="seq2seq", source_len=source_len, seq_len=seq_len, seed=seed,
              directions=list(parse_directions(directions)) if not data_path else [],
              n_train_examples=len(train_rows), n_val_examples=len(val_rows),
              n_heldout=len(heldout), train=train_stats, val=val_stats)
  logging.info("seq2seq data from %s: %d train, %d val, %d held-out examples", source,
               len(train_rows), len(val_rows), len(heldout))
  return train_ds, val_ds, heldout, info
