"""Agreement between two raters (a judge and humans): kappa, correlations, confusion matrix.

Every statistic returns {"value", "reason"}: value None with the reason when it is undefined
(kappa when the expected disagreement is zero, e.g. both raters give one and the same class;
a correlation when a rater is constant), never a silent NaN. `report` adds bootstrap intervals
by resampling the paired items.
"""

import math
import warnings
from typing import Sequence

import numpy as np
from scipy import stats

from infer.eval import bootstrap

WEIGHTS = (None, "linear", "quadratic")


def _result(value=None, reason=None) -> dict:
  if value is not None and not math.isfinite(value):
    value, reason = None, reason or "not finite"
  return {"value": None if value is None else float(value), "reason": reason}


def confusion_matrix(a: Sequence, b: Sequence, labels: Sequence) -> np.ndarray:
  """counts[i, j] = items rater a put in labels[i] and rater b in labels[j]."""
  index = {label: i for i, label in enumerate(labels)}
  counts_KK = np.zeros((len(labels), len(labels)), np.int64)
  for x, y in zip(a, b):
    counts_KK[index[x], index[y]] += 1
  return counts_KK


def percent_agreement(a: Sequence, b: Sequence) -> dict:
  if not len(a):
    return _result(reason="no items")
  return _result(float(np.mean([x == y for x, y in zip(a, b)])))


def cohen_kappa(a: Sequence, b: Sequence, labels: Sequence, weights: str | None = None) -> dict:
  """Cohen's kappa, unweighted or with linear / quadratic disagreement weights.

  `labels` fixes the categories and, for weighted kappa, their order. kappa = 1 - sum(w O) /
  sum(w E) with O the observed and E the chance (product of marginals) proportions.
  """
  if weights not in WEIGHTS:
    raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
  if not len(a):
    return _result(reason="no items")
  k = len(labels)
  observed_KK = confusion_matrix(a, b, labels) / len(a)
  expected_KK = np.outer(observed_KK.sum(1), observed_KK.sum(0))
  i_KK, j_KK = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
  if weights is None:
    w_KK = (i_KK != j_KK).astype(np.float64)
  else:
    distance_KK = np.abs(i_KK - j_KK) / max(k - 1, 1)
    w_KK = distance_KK if weights == "linear" else distance_KK ** 2
  chance = float((w_KK * expected_KK).sum())
  if chance <= 1e-12:
    return _result(reason="undefined: chance disagreement is zero (both raters used a single, "
                   "identical category)")
  return _result(1.0 - float((w_KK * observed_KK).sum()) / chance)


def correlation(x: Sequence[float], y: Sequence[float], kind: str) -> dict:
  """Pearson, Spearman or Kendall (tau-b) through scipy; undefined for constant inputs."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2:
    return _result(reason="needs at least 2 items")
  if np.all(x == x[0]) or np.all(y == y[0]):
    return _result(reason="undefined: one rater gives every item the same value")
  fn = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}[kind]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return _result(float(fn(x, y)[0]))


def _boot(fn, n: int, n_samples: int, seed: int) -> dict:
  full = fn(np.arange(n))
  out = bootstrap.interval(lambda idx: fn(idx)["value"], n, n_samples, seed)
  if full["reason"]:
    out["reason"] = full["reason"]
  return out


def report(judge: Sequence, human: Sequence, labels: Sequence, n_samples: int = 1000,
           seed: int = 0, judge_values: Sequence[float] | None = None,
           human_values: Sequence[float] | None = None) -> dict:
  """Every statistic with an interval, for paired labels drawn from ordered `labels`.

  Categorical statistics use the labels as categories; correlations use `judge_values` /
  `human_values` when given (e.g. unrounded mean scores), else each label's rank in `labels`
  (so "b" < "tie" < "a" and 1 < ... < 5 both work).
  """
  labels = list(labels)
  unknown = sorted({str(v) for v in list(judge) + list(human) if v not in labels})
  if unknown:
    raise ValueError(f"labels {unknown} are not among the categories {labels}")
  judge, human = list(judge), list(human)
  rank = {label: i for i, label in enumerate(labels)}
  jr = np.asarray(judge_values if judge_values is not None else [rank[v] for v in judge],
                  np.float64)
  hr = np.asarray(human_values if human_values is not None else [rank[v] for v in human],
                  np.float64)
  n = len(judge)

  def pick(seq, idx):
    return [seq[i] for i in idx]

  stats_fns = {
      "percent_agreement": lambda idx: percent_agreement(pick(judge, idx), pick(human, idx)),
      "cohen_kappa": lambda idx: cohen_kappa(pick(judge, idx), pick(human, idx), labels),
      "weighted_kappa_linear": lambda idx: cohen_kappa(pick(judge, idx), pick(human, idx),
                                                       labels, "linear"),
      "weighted_kappa_quadratic": lambda idx: cohen_kappa(pick(judge, idx), pick(human, idx),
                                                          labels, "quadratic"),
      "pearson": lambda idx: correlation(jr[idx], hr[idx], "pearson"),
      "spearman": lambda idx: correlation(jr[idx], hr[idx], "spearman"),
      "kendall": lambda idx: correlation(jr[idx], hr[idx], "kendall"),
  }
  out = {name: _boot(fn, n, n_samples, seed) for name, fn in stats_fns.items()}
  out["confusion_matrix"] = {"labels": [str(v) for v in labels], "rows": "judge",
                             "columns": "human",
                             "counts": confusion_matrix(judge, human, labels).tolist()}
  return out
