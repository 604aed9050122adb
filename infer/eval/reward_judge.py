"""A reward model as a judge: verdicts and scores from rewards, in the text judge's formats.

A scorer is anything with `.score(prompts, replies) -> list[float]` (infer/reward.py
`RewardScorer`, or a fake in tests). Pairwise: in each order the position with the higher
reward wins ("tie" when the rewards differ by less than `tie_margin`, default: only exact
ties); both orders are recorded like the text judge's, so win rates and the position-bias
report apply (a reward judge scores each reply alone, so its position bias is 0). Pointwise:
the reward is the item's `score`; there are no per-criterion scores. Each distinct
(question, reply) is scored once. Rows match infer/eval/judge.py, so infer.meta_eval reads them.
"""

import itertools
import json
import os
from typing import Protocol, Sequence

from infer.eval import judge as judge_lib

NO_CRITERIA = judge_lib.Rubric("reward", (), ())  # summaries of the aggregate score only


class Scorer(Protocol):

  def score(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]:
    ...


def is_reward_run(workdir: str) -> bool:
  """Whether a run directory's config.json says head="reward"."""
  from model import store
  try:
    return store.read_run_config(workdir).head == "reward"
  except FileNotFoundError:
    return False
  except ValueError:  # an unreadable config: fall back to its raw "head" key
    try:
      with open(os.path.join(workdir, store.CONFIG_FILE)) as f:
        return json.load(f).get("head") == "reward"
    except (OSError, ValueError, AttributeError):
      return False


def load_scorer(workdir: str) -> Scorer:
  """The reward model of a run directory (infer/reward.py)."""
  from infer.reward import RewardScorer
  return RewardScorer(workdir)


def _rewards(scorer: Scorer, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], float]:
  unique = list(dict.fromkeys(pairs))
  values = scorer.score([q for q, _ in unique], [r for _, r in unique]) if unique else []
  if len(values) != len(unique):
    raise ValueError(f"the reward scorer returned {len(values)} rewards for {len(unique)} "
                     "replies; it must return one per reply")
  return {k: float(v) for k, v in zip(unique, values)}


def _position(first: float, second: float, tie_margin: float) -> str:
  if abs(first - second) < tie_margin or first == second:
    return "tie"
  return "A" if first > second else "B"


def judge_pairwise(scorer: Scorer, candidates: dict[str, Sequence[dict]],
                   tie_margin: float = 0.0) -> list[dict]:
  """One row per (pair of systems, shared id), both orders, plus "reward_a" and "reward_b"."""
  if tie_margin < 0:
    raise ValueError(f"--tie_margin must be >= 0, got {tie_margin}")
  jobs = []
  for sys_a, sys_b in itertools.combinations(candidates, 2):
    b_by_id = {r["id"]: r for r in candidates[sys_b]}
    for row_a in candidates[sys_a]:
      if row_a["id"] in b_by_id:
        jobs.append((sys_a, sys_b, row_a, b_by_id[row_a["id"]]))
  question = judge_lib._question  # pylint: disable=protected-access
  rewards = _rewards(scorer, [(question(row_a), row["prediction"]) for _, _, row_a, row_b in jobs
                              for row in (row_a, row_b)])
  judged = []
  for sys_a, sys_b, row_a, row_b in jobs:
    r_a = rewards[(question(row_a), row_a["prediction"])]
    r_b = rewards[(question(row_a), row_b["prediction"])]
    orders = {}
    for name, (first, second) in (("order_ab", (r_a, r_b)), ("order_ba", (r_b, r_a))):
      position = _position(first, second, tie_margin)
      orders[name] = {"position": position, "error": None,
                      "raw": f"reward A={first:.6g} B={second:.6g}\nVerdict: {position}"}
    verdict = judge_lib._combined(  # pylint: disable=protected-access
        orders["order_ab"]["position"], orders["order_ba"]["position"])
    judged.append(dict(key=f"{row_a['id']}|{sys_a}|{sys_b}", id=row_a["id"], system_a=sys_a,
                       system_b=sys_b, verdict=verdict, **orders, reward_a=r_a, reward_b=r_b,
                       len_a=len(row_a["prediction"].split()),
                       len_b=len(row_b["prediction"].split())))
  return judged


def judge_pointwise(scorer: Scorer, candidates: dict[str, Sequence[dict]]) -> list[dict]:
  """One row per (system, id) with the reward as "score" and "scores" None."""
  items = [(system, row) for system, rows in candidates.items() for row in rows]
  question = judge_lib._question  # pylint: disable=protected-access
  rewards = _rewards(scorer, [(question(row), row["prediction"]) for _, row in items])
  judged = []
  for system, row in items:
    reward = rewards[(question(row), row["prediction"])]
    judged.append(dict(key=f"{row['id']}|{system}", id=row["id"], system=system, score=reward,
                       scores=None, rationale="", error=None, raw=f"reward {reward:.6g}",
                       length=len(row["prediction"].split())))
  return judged


def run(scorer: Scorer, mode: str, candidates: dict[str, Sequence[dict]],
        tie_margin: float = 0.0, n_samples: int = 1000, seed: int = 0) -> tuple[list, dict, dict]:
  """(judgement rows, scores summary, config entries) for `mode` "pairwise" or "pointwise"."""
  if mode == "pairwise":
    rows = judge_pairwise(scorer, candidates, tie_margin)
    if not rows:
      raise ValueError("the candidate files share no ids; pairwise judging compares answers to "
                       "the same id")
    scores = judge_lib.summarize_pairwise(rows, n_samples, seed)
    config = dict(judge_kind="reward", tie_margin=tie_margin,
                  verdict="the reply with the higher reward; a tie when they differ by less "
                          "than tie_margin (or are equal)")
  elif mode == "pointwise":
    rows = judge_pointwise(scorer, candidates)
    scores = judge_lib.summarize_pointwise(rows, NO_CRITERIA, n_samples, seed)
    config = dict(judge_kind="reward", criteria=None,
                  note="score is the reward model's reward (unbounded, not on a rubric scale); "
                       "there are no per-criterion scores")
  else:
    raise ValueError(f"unknown mode {mode!r}; use 'pairwise' or 'pointwise'")
  return rows, scores, config
