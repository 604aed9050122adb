"""Run records in, validated float64 columns out, with each run's compute-budget group.

Accepts a list of dicts, a dict of columns, or anything with `.to_dict("records")`, with
columns `params`, `tokens`, `loss` and optionally `flops` (default 6*params*tokens), `budget`
(the nominal compute budget C of the run's IsoFLOP group; without it runs whose flops are
within ~5% of a neighbour share a group), `non_embedding_params` and `non_embedding_flops`
(default 6*non_embedding_params*tokens).

Seeds: with a `seed` column, runs of one budget group with the same params and tokens are one
sweep point trained with several seeds. The table then holds one row per point with the
seed-averaged loss, and keeps every seed's loss (`seed_loss`) for the seed-noise summary and
the bootstrap, which redraws each point's seeds (see `bootstrap_losses`).
"""

import dataclasses
import math
from typing import Any, Mapping, Optional

import numpy as np


class InsufficientDataError(ValueError):
  """The runs cannot support the requested fit (too few budgets or runs)."""


REQUIRED_COLUMNS = ("params", "tokens", "loss")
OPTIONAL_COLUMNS = ("flops", "budget", "non_embedding_params", "non_embedding_flops", "seed")
GROUP_TOLERANCE = 1.05  # runs whose flops differ by <5% from a neighbour share a budget
COUNTS = ("total", "non_embedding")


@dataclasses.dataclass
class RunTable:
  """Validated runs as float64 columns, with each run's budget group."""
  params: np.ndarray
  tokens: np.ndarray
  loss: np.ndarray
  flops: np.ndarray
  non_embedding_params: Optional[np.ndarray]
  non_embedding_flops: Optional[np.ndarray]
  group: np.ndarray  # index into `budgets`
  budgets: np.ndarray  # nominal C per group (given, or the geometric mean of its flops)
  has_budget: bool
  dropped: list  # [{"row": i, "reason": ...}] for runs left out (non-finite loss)
  seed_loss: Optional[np.ndarray] = None  # (points, max seeds), NaN-padded; None: no seeds

  @property
  def has_non_embedding(self) -> bool:
    return self.non_embedding_params is not None

  def __len__(self) -> int:
    return len(self.loss)

  @property
  def n_seeds(self) -> np.ndarray:
    if self.seed_loss is None:
      return np.ones(len(self), int)
    return np.isfinite(self.seed_loss).sum(1)

  def groups(self) -> list:
    return [np.flatnonzero(self.group == g) for g in range(len(self.budgets))]

  def columns(self, count: str) -> tuple[np.ndarray, np.ndarray]:
    """(params, flops) under the given parameter accounting."""
    if count not in COUNTS:
      raise ValueError(f"count must be one of {COUNTS}, got {count!r}")
    if count == "total":
      return self.params, self.flops
    if not self.has_non_embedding:
      raise ValueError("count='non_embedding' needs a non_embedding_params column in the runs")
    return self.non_embedding_params, self.non_embedding_flops

  def records(self) -> list:
    """One dict per run; with seeds, one per (point, seed) with a `seed` column, so the
    records normalise back to this table."""
    rows = []
    for i in range(len(self)):
      row = {"params": self.params[i], "tokens": self.tokens[i], "loss": self.loss[i],
             "flops": self.flops[i], "budget": self.budgets[self.group[i]]}
      if self.has_non_embedding:
        row["non_embedding_params"] = self.non_embedding_params[i]
        row["non_embedding_flops"] = self.non_embedding_flops[i]
      if self.seed_loss is None:
        rows.append({k: float(v) for k, v in row.items()})
        continue
      for s in range(self.n_seeds[i]):
        rows.append({k: float(v) for k, v in dict(row, loss=self.seed_loss[i, s],
                                                      seed=s).items()})
    return rows


def _as_records(runs) -> list:
  if hasattr(runs, "to_dict") and not isinstance(runs, Mapping):
    runs = runs.to_dict("records")
  if isinstance(runs, Mapping):
    lengths = {k: len(v) for k, v in runs.items()}
    if len(set(lengths.values())) > 1:
      raise ValueError(f"run columns have different lengths: {lengths}")
    n = next(iter(lengths.values()), 0)
    return [{k: runs[k][i] for k in runs} for i in range(n)]
  return list(runs)


def _to_float(value, column: str, row: int) -> float:
  if value is None or (isinstance(value, str) and not value.strip()):
    return math.nan
  try:
    return float(value)
  except (TypeError, ValueError):
    raise ValueError(f"run {row}: column {column!r} is not a number: {value!r}") from None


def normalize_runs(runs) -> RunTable:
  """Validates run records and assigns budget groups; raises ValueError naming what is wrong."""
  if isinstance(runs, RunTable):
    return runs
  records = _as_records(runs)
  if not records:
    raise InsufficientDataError("no runs given; need rows with params, tokens, loss")
  present = set().union(*(r.keys() for r in records))
  missing = [c for c in REQUIRED_COLUMNS if c not in present]
  if missing:
    raise ValueError(f"runs are missing required column(s): {', '.join(missing)} "
                     f"(have: {', '.join(sorted(present)) or 'none'}); every run needs "
                     f"{', '.join(REQUIRED_COLUMNS)}")
  cols = {c: np.array([_to_float(r.get(c), c, i) for i, r in enumerate(records)])
          for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in present}
  for c in ("params", "tokens"):
    bad = np.flatnonzero(~(np.isfinite(cols[c]) & (cols[c] > 0)))
    if bad.size:
      raise ValueError(f"column {c!r} must be a positive number in every run; bad rows: "
                       f"{bad[:10].tolist()}")
  bad = np.flatnonzero(np.isfinite(cols["loss"]) & (cols["loss"] <= 0))
  if bad.size:
    raise ValueError(f"loss must be positive (a cross-entropy in nats); bad rows: "
                     f"{bad[:10].tolist()}")
  keep = np.isfinite(cols["loss"])
  dropped = [{"row": int(i), "reason": "non-finite loss (diverged or missing)"}
             for i in np.flatnonzero(~keep)]
  cols = {c: v[keep] for c, v in cols.items()}
  if not keep.any():
    raise InsufficientDataError("every run has a non-finite loss; nothing to fit")

  def optional_positive(name, default):
    if name not in cols:
      return default
    v = cols[name]
    if np.any(np.isfinite(v) & (v <= 0)):
      raise ValueError(f"column {name!r} must be positive where given")
    return np.where(np.isfinite(v), v, default)

  flops = optional_positive("flops", 6.0 * cols["params"] * cols["tokens"])
  ne_params = ne_flops = None
  if "non_embedding_params" in cols:
    ne_params = cols["non_embedding_params"]
    if not np.all(np.isfinite(ne_params) & (ne_params > 0)):
      raise ValueError("column 'non_embedding_params' must be a positive number in every run "
                       "(or drop the column)")
    if np.any(ne_params > cols["params"]):
      raise ValueError("non_embedding_params exceeds params in some runs; params must count "
                       "all parameters including embeddings")
    ne_flops = optional_positive("non_embedding_flops", 6.0 * ne_params * cols["tokens"])
  has_budget = "budget" in cols
  if has_budget:
    budget = cols["budget"]
    if not np.all(np.isfinite(budget) & (budget > 0)):
      raise ValueError("column 'budget' has empty or non-positive values; fill it for every "
                       "run or drop the column to group runs by flops")
    budgets, group = np.unique(budget, return_inverse=True)
  else:
    group, budgets = _group_by_flops(flops)
  table = RunTable(params=cols["params"], tokens=cols["tokens"], loss=cols["loss"], flops=flops,
                   non_embedding_params=ne_params, non_embedding_flops=ne_flops,
                   group=group.astype(int), budgets=budgets.astype(np.float64),
                   has_budget=has_budget, dropped=dropped)
  return _average_seeds(table) if "seed" in cols else table


def _average_seeds(table: RunTable) -> RunTable:
  """One row per (budget group, params, tokens): the mean loss over its seeds."""
  keys = np.stack([table.group, table.params, table.tokens], axis=1)
  _, first, point = np.unique(keys, axis=0, return_index=True, return_inverse=True)
  point = point.reshape(-1)
  counts = np.bincount(point)
  seed_loss = np.full((len(first), counts.max()), np.nan)
  slot = np.zeros(len(first), int)
  for i, p in enumerate(point):
    seed_loss[p, slot[p]] = table.loss[i]
    slot[p] += 1
  pick = lambda v: None if v is None else v[first]
  return dataclasses.replace(
      table, params=table.params[first], tokens=table.tokens[first],
      loss=np.nanmean(seed_loss, axis=1), flops=table.flops[first],
      non_embedding_params=pick(table.non_embedding_params),
      non_embedding_flops=pick(table.non_embedding_flops), group=table.group[first],
      seed_loss=seed_loss)


def seed_noise(table: RunTable) -> Optional[dict]:
  """Run-to-run (seed) noise of the held-out loss: the pooled within-point standard deviation
  sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over points with >= 2 seeds, absolute and relative
  to the loss, overall and per budget. None without repeated seeds."""
  if table.seed_loss is None or table.n_seeds.max() < 2:
    return None
  n = table.n_seeds
  dev = table.seed_loss - table.loss[:, None]
  ss = np.nansum(dev ** 2, axis=1)
  rel_ss = np.nansum((dev / table.loss[:, None]) ** 2, axis=1)

  def pooled(mask):
    dof = float((n[mask] - 1).sum())
    if dof <= 0:
      return None, None
    return math.sqrt(ss[mask].sum() / dof), math.sqrt(rel_ss[mask].sum() / dof)

  std, rel = pooled(np.ones(len(table), bool))
  per_budget = []
  for g, c in enumerate(table.budgets):
    s, r = pooled(table.group == g)
    per_budget.append({"C": float(c), "std": s, "relative_std": r,
                       "points": int((table.group == g).sum())})
  return {"std": std, "relative_std": rel, "dof": int((n - 1).sum()),
          "seeds_per_point": [int(n.min()), int(n.max())], "per_budget": per_budget,
          "std_of_mean": std / math.sqrt(float(np.mean(n)))}


def bootstrap_losses(table: RunTable, n: int, rng: np.random.Generator) -> np.ndarray:
  """(n, points) losses for n bootstrap resamples: each point's seeds redrawn with
  replacement and averaged. A point with one seed, in a table whose other points measured the
  seed noise, gets log-normal noise of the pooled relative seed std instead (a parametric
  stand-in for the seeds it lacks); without any repeated seeds the losses stay fixed."""
  if table.seed_loss is None:
    return np.broadcast_to(table.loss, (n, len(table)))
  noise = seed_noise(table)
  rel = noise["relative_std"] if noise else 0.0
  out = np.empty((n, len(table)))
  for p, k in enumerate(table.n_seeds):
    vals = table.seed_loss[p, :k]
    if k > 1:
      out[:, p] = vals[rng.integers(0, k, size=(n, k))].mean(1)
    else:
      out[:, p] = vals[0] * np.exp(rel * rng.standard_normal(n)) if rel else vals[0]
  return out


def _group_by_flops(flops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Chains runs whose sorted log-flops are within ln(1.05) of a neighbour into one budget."""
  order = np.argsort(flops)
  log_f = np.log(flops[order])
  starts = np.concatenate([[True], np.diff(log_f) > math.log(GROUP_TOLERANCE)])
  sorted_group = np.cumsum(starts) - 1
  group = np.empty_like(sorted_group)
  group[order] = sorted_group
  budgets = np.array([math.exp(log_f[sorted_group == g].mean())
                      for g in range(sorted_group[-1] + 1)])
  return group, budgets


def to_jsonable(obj: Any) -> Any:
  """numpy scalars/arrays to Python; NaN and inf to None."""
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return to_jsonable(obj.tolist())
  if isinstance(obj, (bool, np.bool_)):
    return bool(obj)
  if isinstance(obj, (int, np.integer)):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  return obj
