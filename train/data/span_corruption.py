"""T5-style span corruption: plain-text windows -> seq2seq rows for encoder-decoder pretraining.

About `noise_density` of each window's tokens, in spans of mean length `mean_span`, are cut
out of the source and replaced by one sentinel each; the target lists every sentinel
followed by the tokens it replaced, then EOS (Raffel et al. 2020, section 3.1.4):
  source: The <s0> fox jumps <s1> dog      target: <s0> quick brown <s1> over the lazy <eos>
Sentinels are `n_sentinels` ids just above the tokenizer's vocabulary; `with_sentinels`
widens the tokenizer's reported vocabulary so the model's embedding covers them (the
saved tokenizer is unchanged and decoding skips them). Corruption is a pure function of
(seed, step, global row), so batches stay stateless and resumable.
"""

import numpy as np

from model.encoder_decoder import DECODER_START_ID

_EVAL_SEED = 0x5EED


def span_lengths(rng: np.random.Generator, length: int, noise_density: float,
                 mean_span: float, max_spans: int) -> tuple[np.ndarray, np.ndarray]:
  """(kept run lengths, noise span lengths), interleaved kept_0, noise_0, kept_1, noise_1, ...

  The n noise tokens and the length - n kept tokens are each split into the same number of
  runs by random cut points (every noise span >= 1 token; the first kept run may be empty).
  """
  n_noise = min(max(1, int(round(length * noise_density))), length - 1)
  n_spans = max(1, min(max_spans, int(round(n_noise / mean_span)), length - n_noise))

  def split(total, parts, first_may_be_empty):
    if first_may_be_empty:  # cut points may coincide with the start
      cuts = np.sort(rng.choice(total, parts - 1, replace=False)) if parts > 1 else []
      return np.diff(np.concatenate([[0], cuts, [total]])).astype(np.int64)
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False)) if parts > 1 else []
    return np.diff(np.concatenate([[0], cuts, [total]])).astype(np.int64)

  noise = split(n_noise, n_spans, False)
  kept = split(length - n_noise, n_spans, True)
  return kept, noise


def corrupt(rng, tokens_L: np.ndarray, sentinel_ids, eos_id: int, noise_density: float,
            mean_span: float) -> tuple[list[int], list[int]]:
  """(source ids, target ids ending in eos) of one window."""
  kept, noise = span_lengths(rng, len(tokens_L), noise_density, mean_span, len(sentinel_ids))
  source, target, pos = [], [], 0
  for i, (k, n) in enumerate(zip(kept, noise)):
    source.extend(tokens_L[pos:pos + k].tolist())
    pos += k
    source.append(sentinel_ids[i])
    target.append(sentinel_ids[i])
    target.extend(tokens_L[pos:pos + n].tolist())
    pos += n
  source.extend(tokens_L[pos:].tolist())
  return source, target + ([eos_id] if eos_id >= 0 else [])


class SentinelTokenizer:
  """A tokenizer whose vocabulary reports `n` extra ids (the sentinels); all else delegates."""

  def __init__(self, base, n: int):
    self.base, self.n_sentinels = base, n

  def __getattr__(self, name):
    if name == "base":
      raise AttributeError(name)
    return getattr(self.base, name)

  @property
  def vocab_size(self) -> int:
    return self.base.vocab_size + self.n_sentinels

  @property
  def sentinel_ids(self) -> list[int]:
    return list(range(self.base.vocab_size, self.base.vocab_size + self.n_sentinels))


def with_sentinels(tokenizer, n: int) -> SentinelTokenizer:
  if n < 1:
    raise ValueError(f"span corruption needs >= 1 sentinel id, got {n}")
  return tokenizer if isinstance(tokenizer, SentinelTokenizer) else SentinelTokenizer(tokenizer, n)


class SpanCorruptionDataset:
  """Seq2seq rows (train/data/seq2seq.py ROW_KEYS) from a token-window dataset."""

  def __init__(self, base, tokenizer: SentinelTokenizer, target_len: int,
               noise_density: float = 0.15, mean_span: float = 3.0):
    if not 0 < noise_density < 1 or mean_span < 1:
      raise ValueError(f"span corruption needs 0 < noise_density < 1 and mean_span >= 1, got "
                       f"{noise_density} and {mean_span}")
    self.base = base
    self.sentinels = tokenizer.sentinel_ids
    self.eos_id, self.pad_id = tokenizer.eos_id, max(0, tokenizer.pad_id)
    self.source_len, self.target_len = base.seq_len, target_len
    self.noise_density, self.mean_span = noise_density, mean_span

  def __getattr__(self, name):
    if name == "base":
      raise AttributeError(name)
    return getattr(self.base, name)

  def _rows(self, windows_BL: np.ndarray, seed_parts, global_rows) -> dict:
    b = len(windows_BL)
    out = dict(source=np.full((b, self.source_len), self.pad_id, np.int32),
               source_valid=np.zeros((b, self.source_len), np.int32),
               inputs=np.full((b, self.target_len), self.pad_id, np.int32),
               targets=np.full((b, self.target_len), self.pad_id, np.int32),
               weights=np.zeros((b, self.target_len), np.float32))
    for i, (tokens_L, row) in enumerate(zip(windows_BL, global_rows)):
      rng = np.random.default_rng(np.random.SeedSequence([*seed_parts, int(row)]))
      src, tgt = corrupt(rng, np.asarray(tokens_L), self.sentinels, self.eos_id,
                         self.noise_density, self.mean_span)
      src, tgt = src[:self.source_len], tgt[:self.target_len]
      out["source"][i, :len(src)] = src
      out["source_valid"][i, :len(src)] = 1
      out["inputs"][i, :len(tgt)] = [DECODER_START_ID] + tgt[:-1]
      out["targets"][i, :len(tgt)] = tgt
      out["weights"][i, :len(tgt)] = 1.0
    return out

  def batch(self, seed: int, step: int, batch_size: int, process_index: int = 0,
            process_count: int = 1) -> dict:
    rows = self.base.batch(seed, step, batch_size, process_index, process_count)
    global_rows = self.base._local_rows(batch_size, process_index, process_count)
    return self._rows(rows["inputs"], (seed & (2**63 - 1), step), global_rows)

  def eval_batches(self, batch_size: int, n_batches: int | None = None, process_index: int = 0,
                   process_count: int = 1) -> list[dict]:
    batches = self.base.eval_batches(batch_size, n_batches, process_index, process_count)
    global_rows = self.base._local_rows(batch_size, process_index, process_count)
    return [self._rows(rows["inputs"], (_EVAL_SEED, i), global_rows)
            for i, rows in enumerate(batches)]
