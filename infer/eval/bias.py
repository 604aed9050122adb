"""Judge bias reports: position bias, length bias and self-preference.

Pairwise judgement rows (infer/eval/judge.py) carry the verdict of each presentation order
("order_ab", "order_ba": the position "A" | "B" | "tie" | None chosen), the combined verdict
("a" | "b" | "tie" | None, in terms of the systems) and both answers' lengths; pointwise rows
carry "score" and "length".
"""

from typing import Sequence

import numpy as np

from infer.eval import agreement

VERDICT_VALUE = {"a": 1.0, "tie": 0.0, "b": -1.0}


def position_bias(rows: Sequence[dict]) -> dict:
  """How often the verdict follows the position rather than the answer.

  rate: share of items judged in both orders (both parsed, neither a tie) where the same
  position won both times, i.e. the preferred system flipped with the order.
  first_position_rate: share of parsed, non-tie single-order verdicts choosing position A
  (0.5 for an unbiased judge on balanced data).
  """
  both, flipped, firsts, decided = 0, 0, 0, 0
  for row in rows:
    ab, ba = row.get("order_ab", {}).get("position"), row.get("order_ba", {}).get("position")
    for p in (ab, ba):
      if p in ("A", "B"):
        decided += 1
        firsts += p == "A"
    if ab in ("A", "B") and ba in ("A", "B"):
      both += 1
      flipped += ab == ba
  return {"rate": flipped / both if both else None, "n_pairs_both_orders": both,
          "first_position_rate": firsts / decided if decided else None,
          "n_decided_verdicts": decided,
          "reason": None if both else "no item has a decided verdict in both orders"}


def length_bias(rows: Sequence[dict], pairwise: bool) -> dict:
  """Correlation of the verdict (a=1, tie=0, b=-1) with len(a) - len(b), or of the pointwise
  score with the answer's length; plus, pairwise, how often the longer answer wins."""
  if pairwise:
    rows = [r for r in rows if r.get("verdict") in VERDICT_VALUE]
    x = [r["len_a"] - r["len_b"] for r in rows]
    y = [VERDICT_VALUE[r["verdict"]] for r in rows]
    decided = [(d, v) for d, v in zip(x, y) if d != 0 and v != 0]
    longer = sum((d > 0) == (v > 0) for d, v in decided)
    extra = {"longer_wins_rate": longer / len(decided) if decided else None,
             "n_decided_with_length_difference": len(decided)}
  else:
    rows = [r for r in rows if r.get("score") is not None]
    x = [r["length"] for r in rows]
    y = [r["score"] for r in rows]
    extra = {}
  return dict(spearman=agreement.correlation(x, y, "spearman"),
              pearson=agreement.correlation(x, y, "pearson"), n=len(rows), **extra)


def self_preference(rows: Sequence[dict], human: dict, system: str, pairwise: bool) -> dict:
  """How much more the judge favours `system` (its own outputs) than humans do.

  pairwise: judge win rate of `system` minus the human win rate on the same items (ties
  count one half). pointwise: mean (judge - human) score on `system`'s items minus the same
  on the other systems' items. `human` maps the row key to the human label.
  """
  if pairwise:
    judge_w, human_w = [], []
    for row in rows:
      if system not in (row["system_a"], row["system_b"]) or row.get("verdict") is None:
        continue
      label = human.get(row["key"])
      if label is None:
        continue
      side = "a" if row["system_a"] == system else "b"
      judge_w.append(_win(row["verdict"], side))
      human_w.append(_win(label, side))
    if not judge_w:
      return {"value": None, "reason": f"no judged item involving {system!r} has a human label"}
    return {"value": float(np.mean(judge_w) - np.mean(human_w)),
            "judge_win_rate": float(np.mean(judge_w)), "human_win_rate": float(np.mean(human_w)),
            "n": len(judge_w), "reason": None}
  own, other = [], []
  for row in rows:
    label = human.get(row["key"])
    if row.get("score") is None or label is None:
      continue
    (own if row.get("system") == system else other).append(row["score"] - float(label))
  if not own or not other:
    return {"value": None, "reason": f"needs human-labelled items of {system!r} and of another "
            "system"}
  return {"value": float(np.mean(own) - np.mean(other)), "own_minus_human": float(np.mean(own)),
          "others_minus_human": float(np.mean(other)), "n": len(own) + len(other),
          "reason": None}


def _win(verdict: str, side: str) -> float:
  return 0.5 if verdict == "tie" else float(verdict == side)
