"""Masked-LM batches: BERT corruption of token windows, a pure function of (seed, step, row).

`corrupt` selects `mask_rate` of each row's non-padding tokens (exactly round(rate * n),
at least one; or whole spans of geometric length with mean `span_mean`, SpanBERT-style),
then replaces the selected ones by [MASK] (80%), a random token (10%) or leaves them (10%).
The model sees the corrupted row and is scored only where selected (weights 1, else 0).

`MlmDataset` wraps a token-window dataset (train/dataset.py): each global row gets its own
RNG seeded by (seed, step, global row), so a batch does not depend on the process count
and a resumed run sees the same masks.
"""

import numpy as np

_EVAL_SEED = 0x6D6C6D  # evaluation masks are fixed: the same batches score every eval


def _select_tokens(rng, valid_L, rate: float) -> np.ndarray:
  n = int(valid_L.sum())
  k = max(1, int(round(rate * n))) if n else 0
  noise_L = np.where(valid_L, rng.random(valid_L.shape), np.inf)
  selected_L = np.zeros(valid_L.shape, bool)
  selected_L[np.argsort(noise_L, kind="stable")[:k]] = True
  return selected_L


def _select_spans(rng, valid_L, rate: float, span_mean: float) -> np.ndarray:
  """Spans (geometric lengths, mean span_mean) until ~rate of the valid tokens is covered."""
  index = np.flatnonzero(valid_L)
  selected_L = np.zeros(valid_L.shape, bool)
  if not index.size:
    return selected_L
  budget = max(1, int(round(rate * index.size)))
  for _ in range(8 * budget):  # overlapping spans can waste draws; this bounds the loop
    covered = int(selected_L.sum())
    if covered >= budget:
      break
    length = min(int(rng.geometric(1.0 / span_mean)), budget - covered, index.size)
    start = int(rng.integers(0, index.size - length + 1))
    selected_L[index[start:start + length]] = True
  return selected_L


def corrupt(rng: np.random.Generator, tokens_L, valid_L, *, mask_id: int, vocab_size: int,
            mask_rate: float = 0.15, mask_fraction: float = 0.8,
            random_fraction: float = 0.1, span_mean: float = 0.0):
  """One row -> (inputs_L, selected_L): the corrupted tokens and where the loss counts."""
  tokens_L = np.asarray(tokens_L)
  valid_L = np.asarray(valid_L, bool)
  if span_mean > 0:
    selected_L = _select_spans(rng, valid_L, mask_rate, span_mean)
  else:
    selected_L = _select_tokens(rng, valid_L, mask_rate)
  u_L = rng.random(tokens_L.shape)
  to_mask_L = selected_L & (u_L < mask_fraction)
  to_random_L = selected_L & (u_L >= mask_fraction) & (u_L < mask_fraction + random_fraction)
  inputs_L = np.where(to_mask_L, mask_id, tokens_L)
  random_L = rng.integers(0, vocab_size, tokens_L.shape)
  inputs_L = np.where(to_random_L, random_L, inputs_L)
  return inputs_L.astype(np.int32), selected_L


def require_mask_id(tokenizer) -> int:
  """The tokenizer's [MASK] id, or an error saying how to get a tokenizer that has one."""
  mask_id = getattr(tokenizer, "mask_id", None)
  if mask_id is None:
    raise ValueError(
        "masked-LM training needs a [MASK] symbol, but this tokenizer was trained without one "
        "(an older run or a decoder run's tokenizer). Pretrain the encoder without "
        "--init_from (data.kind=mlm trains a tokenizer with [MASK]), or --init_from an "
        "encoder run (python -m train.main --config=experiments/encoder.py)")
  return int(mask_id)


class MlmDataset:
  """Masked-LM view of a token-window dataset; other attributes pass through to it.

  Batches hold int32 inputs (corrupted), targets (the original tokens), segment_ids
  (1 = token, 0 = padding) and float32 weights (1 where selected), each [b, seq_len].
  """

  def __init__(self, base, tokenizer, mlm_config, pad_id: int | None = None):
    self.base = base
    self.mask_id = require_mask_id(tokenizer)
    self.vocab_size = tokenizer.vocab_size
    self.pad_id = tokenizer.pad_id if pad_id is None else pad_id
    self.options = dict(mask_rate=mlm_config.mask_rate, mask_fraction=mlm_config.mask_fraction,
                        random_fraction=mlm_config.random_fraction,
                        span_mean=mlm_config.span_mean)

  def __getattr__(self, name):
    if name == "base":  # not set yet (e.g. during unpickling)
      raise AttributeError(name)
    return getattr(self.base, name)

  def _mask(self, rows: dict, seed_parts, global_rows) -> dict:
    tokens_BL = np.asarray(rows["inputs"], np.int32)
    if "segment_ids" in rows:
      valid_BL = np.asarray(rows["segment_ids"]) > 0
    else:
      valid_BL = tokens_BL != self.pad_id
    inputs, selected = [], []
    for tokens_L, valid_L, row in zip(tokens_BL, valid_BL, global_rows):
      rng = np.random.default_rng(np.random.SeedSequence([*seed_parts, int(row)]))
      x_L, s_L = corrupt(rng, tokens_L, valid_L, mask_id=self.mask_id,
                         vocab_size=self.vocab_size, **self.options)
      inputs.append(x_L)
      selected.append(s_L)
    return {"inputs": np.stack(inputs), "targets": tokens_BL,
            "segment_ids": valid_BL.astype(np.int32),
            "weights": np.stack(selected).astype(np.float32)}

  def batch(self, seed: int, step: int, batch_size: int, process_index: int = 0,
            process_count: int = 1) -> dict:
    rows = self.base.batch(seed, step, batch_size, process_index, process_count)
    global_rows = self.base._local_rows(batch_size, process_index, process_count)  # pylint: disable=protected-access
    return self._mask(rows, (seed & (2**63 - 1), step), global_rows)

  def eval_batches(self, batch_size: int, n_batches: int | None = None, process_index: int = 0,
                   process_count: int = 1) -> list[dict]:
    batches = self.base.eval_batches(batch_size, n_batches, process_index, process_count)
    global_rows = self.base._local_rows(batch_size, process_index, process_count)  # pylint: disable=protected-access
    return [self._mask(rows, (_EVAL_SEED, i), global_rows) for i, rows in enumerate(batches)]
