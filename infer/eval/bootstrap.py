"""Bootstrap confidence intervals over examples, and paired comparisons of two systems.

Resampling draws example indices with replacement from a seeded generator and recomputes the
aggregate itself on each resample (a mean, a corpus BLEU, a kappa, ...), so an interval
always belongs to the number reported beside it. Percentile intervals.
"""

import math
from typing import Callable

import numpy as np

DEFAULT_SAMPLES = 1000


def _indices(n: int, n_samples: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, n, size=(n_samples, n))


def _finite(value) -> bool:
  return value is not None and math.isfinite(value)


def interval(value_fn: Callable[[np.ndarray], float | None], n: int,
             n_samples: int = DEFAULT_SAMPLES, seed: int = 0, confidence: float = 0.95) -> dict:
  """{"value", "low", "high", "n"}: value_fn over all n rows, percentile bounds over resamples.

  Resamples where the aggregate is undefined (None / NaN, e.g. a kappa on one class) are
  dropped and counted in "undefined_resamples"; with no rows everything is None.
  """
  if n == 0:
    return {"value": None, "low": None, "high": None, "n": 0}
  value = value_fn(np.arange(n))
  out = {"value": value if _finite(value) else None, "n": n}
  if n_samples <= 0:
    return dict(out, low=None, high=None)
  draws = [value_fn(idx) for idx in _indices(n, n_samples, seed)]
  finite = np.asarray([d for d in draws if _finite(d)], np.float64)
  alpha = (1 - confidence) / 2
  if len(finite):
    out["low"], out["high"] = (float(q) for q in np.quantile(finite, [alpha, 1 - alpha]))
  else:
    out["low"] = out["high"] = None
  if len(finite) < len(draws):
    out["undefined_resamples"] = len(draws) - len(finite)
  return out


def paired(value_a: Callable[[np.ndarray], float], value_b: Callable[[np.ndarray], float],
           n: int, n_samples: int = DEFAULT_SAMPLES, seed: int = 0,
           confidence: float = 0.95) -> dict:
  """A minus B on the same n examples, resampled jointly: {"a", "b", "difference", "low",
  "high", "p_value"} where p_value is the two-sided share of resamples on the other side of 0.
  """
  if n == 0:
    raise ValueError("a paired comparison needs at least one shared example id")
  idx_all = np.arange(n)
  a, b = value_a(idx_all), value_b(idx_all)
  diffs = np.asarray([value_a(idx) - value_b(idx) for idx in _indices(n, n_samples, seed)])
  alpha = (1 - confidence) / 2
  low, high = np.quantile(diffs, [alpha, 1 - alpha])
  one_side = min(np.mean(diffs <= 0), np.mean(diffs >= 0))
  return {"a": a, "b": b, "difference": a - b, "low": float(low), "high": float(high),
          "p_value": float(min(1.0, 2 * one_side)), "n": n}
