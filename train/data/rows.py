"""Data sets held as in-memory rows (a dict of [n_rows, ...] arrays): SFT, preference,
seq2seq and labelled splits share TokenDataset's stateless (seed, step) batching."""

import numpy as np

from train.dataset import TokenDataset


class RowDataset(TokenDataset):
  """TokenDataset over `self.rows` (set by the subclass) instead of a token stream."""

  rows: dict

  def _gather(self, windows: np.ndarray) -> dict:
    return {k: v[windows] for k, v in self.rows.items()}

  def padded_rows(self, pad: int) -> dict:
    """The rows followed by `pad` all-zero rows (zero weight: they add nothing to a
    weight-normalised loss)."""
    return {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
            for k, v in self.rows.items()}

  def eval_batches(self, batch_size: int, n_batches: int | None = None, process_index: int = 0,
                   process_count: int = 1) -> list[dict]:
    """As TokenDataset's, except that a split smaller than one batch (a small user jsonl's
    validation slice) is evaluated as one batch padded with zero-weight rows."""
    if 0 < self.n_windows < batch_size:
      rows = self.padded_rows(batch_size - self.n_windows)
      local = self._local_rows(batch_size, process_index, process_count)
      return [{k: v[local] for k, v in rows.items()}]
    return super().eval_batches(batch_size, n_batches, process_index, process_count)
