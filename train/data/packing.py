"""Encoded examples -> fixed-length rows: packed several to a row, or padded one to a row.

An example is (tokens, weights) with one loss weight per token. Each example is shifted on
its own (inputs t_0..t_{n-2}, targets t_1..t_{n-1}, weights w_1..w_{n-1}), so it takes n-1
slots and no input/target pair ever spans two examples. Rows carry segment ids (1, 2, ...
per example, 0 = padding) and positions restarting at 0 per segment, for the attention mask
and position embeddings of packed training. Padding slots have weight 0.
"""

import heapq
from typing import Sequence

import numpy as np
from absl import logging

ROW_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")
Example = tuple[np.ndarray, np.ndarray]


def fit_examples(encoded: Sequence[Example], seq_len: int) -> tuple[list[Example], dict]:
  """Truncates examples to seq_len+1 tokens (keeping the start) and drops target-less ones.

  Returns (kept examples, counts): an example keeps its prompt and loses the end of its
  response; one with no weighted target left (or fewer than 2 tokens) is dropped.
  """
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  kept, truncated, dropped = [], 0, 0
  for tokens, weights in encoded:
    tokens, weights = np.asarray(tokens), np.asarray(weights, np.float32)
    if tokens.shape != weights.shape or tokens.ndim != 1:
      raise ValueError(f"an example needs 1-D tokens and weights of one shape, got "
                       f"{tokens.shape} and {weights.shape}")
    if tokens.size > seq_len + 1:
      tokens, weights = tokens[:seq_len + 1], weights[:seq_len + 1]
      truncated += 1
    if tokens.size < 2 or not np.any(weights[1:] > 0):
      dropped += 1
      continue
    kept.append((tokens, weights))
  if truncated:
    logging.warning("%d of %d examples are longer than seq_len+1 = %d tokens: their responses "
                    "were truncated (raise seq_len to keep them whole)", truncated, len(encoded),
                    seq_len + 1)
  if dropped:
    logging.warning("dropped %d of %d examples with no response token within seq_len+1 = %d "
                    "tokens (raise seq_len or shorten the prompts)", dropped, len(encoded),
                    seq_len + 1)
  return kept, dict(n_examples=len(encoded), truncated=truncated, dropped=dropped)


def _first_fit(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
  """Example indices per row: longest first, each into the lowest-numbered row it fits."""
  order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep order
  free_rows: list[list[int]] = [[] for _ in range(seq_len + 1)]  # free slots -> row heap
  rows: list[list[int]] = []
  for i in order:
    need = lengths[i]
    best_row, best_free = -1, -1
    for free in range(need, seq_len + 1):
      heap = free_rows[free]
      if heap and (best_row < 0 or heap[0] < best_row):
        best_row, best_free = heap[0], free
    if best_row < 0:
      best_row, best_free = len(rows), seq_len
      rows.append([])
    else:
      heapq.heappop(free_rows[best_free])
    rows[best_row].append(i)
    heapq.heappush(free_rows[best_free - need], best_row)
  return rows


def _fill(kept: Sequence[Example], rows: Sequence[Sequence[int]], seq_len: int,
          pad_id: int) -> dict:
  shape = (len(rows), seq_len)
  out = dict(inputs=np.full(shape, pad_id, np.int32), targets=np.full(shape, pad_id, np.int32),
             weights=np.zeros(shape, np.float32), segment_ids=np.zeros(shape, np.int32),
             positions=np.zeros(shape, np.int32))
  for r, items in enumerate(rows):
    start = 0
    for segment, i in enumerate(items, 1):
      tokens, weights = kept[i]
      end = start + tokens.size - 1
      out["inputs"][r, start:end] = tokens[:-1]
      out["targets"][r, start:end] = tokens[1:]
      out["weights"][r, start:end] = weights[1:]
      out["segment_ids"][r, start:end] = segment
      out["positions"][r, start:end] = np.arange(end - start)
      start = end
  return out


def _stats(counts: dict, rows: dict) -> dict:
  n_rows, seq_len = rows["inputs"].shape
  used = int(np.count_nonzero(rows["segment_ids"]))
  target = float(rows["weights"].sum())
  return dict(counts, rows=n_rows, slots=n_rows * seq_len, used_slots=used,
              target_tokens=target, prompt_tokens=used - int(np.count_nonzero(rows["weights"])),
              efficiency=used / max(1, n_rows * seq_len))


def pack(encoded: Sequence[Example], seq_len: int, pad_id: int = 0) -> tuple[dict, dict]:
  """Whole examples packed greedily into rows of seq_len slots (first-fit decreasing).

  Returns (rows, stats): rows holds int32 inputs, targets, segment_ids, positions and
  float32 weights, each [n_rows, seq_len]; stats counts examples, truncations, drops,
  target and prompt tokens and the packing efficiency (used slots / all slots). The
  result depends only on the examples and their order.
  """
  kept, counts = fit_examples(encoded, seq_len)
  rows = _fill(kept, _first_fit([t.size - 1 for t, _ in kept], seq_len), seq_len, pad_id)
  return rows, _stats(counts, rows)


def pad_rows(encoded: Sequence[Example], seq_len: int, pad_id: int = 0) -> tuple[dict, dict]:
  """One example per row, in order, padded to seq_len: the unpacked alternative to `pack`."""
  kept, counts = fit_examples(encoded, seq_len)
  rows = _fill(kept, [[i] for i in range(len(kept))], seq_len, pad_id)
  return rows, _stats(counts, rows)


def unpack(rows: dict) -> list[dict]:
  """The segments of `rows` in row order: {inputs, targets, weights} per example."""
  segments = []
  for r in range(rows["segment_ids"].shape[0]):
    ids = rows["segment_ids"][r]
    for segment in np.unique(ids[ids > 0]):
      where = ids == segment
      segments.append({k: rows[k][r][where] for k in ("inputs", "targets", "weights")})
  return segments
