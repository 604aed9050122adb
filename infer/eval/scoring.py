"""Scores prediction rows: every metric overall and per slice, each with a bootstrap interval.

Rows are {"id", "prediction", "references", "slices", "metadata"}. "task_score" is the
embedded tasks' own checker (infer/eval/tasks.py `score`) with the row's metadata task
(unknown tasks: exact match of the normalised first line). Results are JSON-able.
"""

import json
import os
import tempfile
from typing import Sequence

import numpy as np

from infer.eval import bootstrap, metrics, tasks

TASK_SCORE = "task_score"


def _task_scores(rows) -> metrics.Prepared:
  values = [tasks.score(str(r["metadata"].get("task", "data")), r["prediction"],
                        r["references"][0]) for r in rows]
  return metrics.mean_metric(TASK_SCORE, values)


def prepare(rows: Sequence[dict], names: Sequence[str]) -> dict[str, metrics.Prepared]:
  library = [n for n in names if n != TASK_SCORE]
  out = metrics.prepare(library, [r["prediction"] for r in rows],
                        [r["references"] for r in rows]) if library else {}
  if TASK_SCORE in names:
    out[TASK_SCORE] = _task_scores(rows)
  return {n: out[n] for n in names}


def aggregates(prepared: dict[str, metrics.Prepared], idx: np.ndarray, n_samples: int,
               seed: int) -> dict:
  """{metric: {"value", "low", "high", "n"}} over the rows `idx` (resampling within them)."""
  out = {}
  for name, p in prepared.items():
    out[name] = bootstrap.interval(lambda sub, p=p: p.value(idx[sub]), len(idx), n_samples,
                                   seed)
  return out


def score_rows(rows: Sequence[dict], names: Sequence[str], n_samples: int = 1000,
               seed: int = 0) -> tuple[dict, list[dict]]:
  """(scores, per_example): scores has each metric, "slices" and "n"; per-example rows carry
  every per-example metric value."""
  if not rows:
    raise ValueError("nothing to score: the data has no rows")
  prepared = prepare(rows, names)
  n = len(rows)
  scores = aggregates(prepared, np.arange(n), n_samples, seed)
  by_slice: dict[str, list[int]] = {}
  for i, row in enumerate(rows):
    for label in row.get("slices", []):
      by_slice.setdefault(label, []).append(i)
  scores["slices"] = {label: aggregates(prepared, np.asarray(idx), n_samples, seed)
                      for label, idx in sorted(by_slice.items())}
  scores["n"] = n
  scores["signatures"] = metrics.signatures(prepared)
  per_example = []
  for i, row in enumerate(rows):
    record = {k: row[k] for k in ("id", "prediction", "references", "slices") if k in row}
    for key in ("input", "raw_prediction", "finish_reason", "n_tokens"):
      if key in row:
        record[key] = row[key]
    record["scores"] = {name: float(p.per_example[i]) for name, p in prepared.items()
                        if p.per_example is not None}
    per_example.append(record)
  return scores, per_example


def compare(rows_a: Sequence[dict], rows_b: Sequence[dict], names: Sequence[str],
            n_samples: int = 1000, seed: int = 0) -> dict:
  """Paired bootstrap of system A minus system B on the ids both scored."""
  b_by_id = {r["id"]: r for r in rows_b}
  shared = [r for r in rows_a if r["id"] in b_by_id]
  pa, pb = prepare(shared, names), prepare([b_by_id[r["id"]] for r in shared], names)
  return {name: bootstrap.paired(pa[name].value, pb[name].value, len(shared), n_samples, seed)
          for name in names}


def write_json(path: str, obj) -> None:
  _atomic(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
  _atomic(path, "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows))


def _atomic(path: str, text: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
