"""LLM-as-judge: rubric and prompt templates from files, pointwise and pairwise judging, parsing.

A judge is any callable mapping a list of prompt texts to a list of output texts (`JudgeFn`):
`model_judge` wraps a run directory, tests plug in scripted fakes. Pairwise judging asks
both orders (A, B) and (B, A) of every pair, maps each verdict back to the systems and keeps
a verdict only when the two orders agree ("tie" when they disagree). An answer that cannot be
parsed is recorded as such (None) and counted, never guessed.
"""

import dataclasses
import itertools
import os
import re
from typing import Callable, Sequence

import numpy as np

from infer.eval import bias, bootstrap

JudgeFn = Callable[[list[str]], list[str]]
RUBRICS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "rubrics")
POINTWISE_FIELDS = ("{criteria}", "{scale}", "{question}", "{answer}")
PAIRWISE_FIELDS = ("{criteria}", "{question}", "{answer_a}", "{answer_b}")
_VERDICT = re.compile(r"verdict\W*[:=]\W*(A|B|tie)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Rubric:
  name: str
  criteria: tuple[tuple[str, str], ...]  # (name, description)
  scale: tuple[tuple[int, str], ...]  # (value, description), ascending

  def criteria_text(self) -> str:
    return "\n".join(f"- {name}: {text}" for name, text in self.criteria)

  def scale_text(self) -> str:
    return "\n".join(f"{value}: {text}" for value, text in self.scale)


def _sections(text: str) -> dict[str, list[str]]:
  sections, current = {}, None
  for line in text.splitlines():
    if line.startswith("## "):
      current = line[3:].strip().lower()
      sections[current] = []
    elif current is not None and line.strip():
      sections[current].append(line.strip())
  return sections


def read_rubric(path: str) -> Rubric:
  """A markdown rubric: "# Name", "## Criteria" with "- name: description" lines and
  "## Scale" with "N: description" lines."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"rubric {path} not found; see rubrics/helpfulness.md for the format")
  text = open(path, encoding="utf-8").read()
  title = next((l[2:].strip() for l in text.splitlines() if l.startswith("# ")),
               os.path.basename(path))
  sections = _sections(text)
  criteria, scale = [], []
  for line in sections.get("criteria", []):
    m = re.fullmatch(r"-\s*([A-Za-z_][\w-]*)\s*:\s*(.+)", line)
    if not m:
      raise ValueError(f"{path}: criteria lines must read '- name: description', got {line!r}")
    criteria.append((m.group(1).lower(), m.group(2)))
  for line in sections.get("scale", []):
    m = re.fullmatch(r"(\d+)\s*[:.-]\s*(.+)", line)
    if not m:
      raise ValueError(f"{path}: scale lines must read 'N: description', got {line!r}")
    scale.append((int(m.group(1)), m.group(2)))
  if not criteria or not scale:
    raise ValueError(f"{path}: needs a '## Criteria' section of '- name: description' lines and "
                     "a '## Scale' section of 'N: description' lines")
  return Rubric(title, tuple(criteria), tuple(sorted(scale)))


def read_template(path: str, fields: Sequence[str]) -> str:
  """A prompt template file; it must contain every placeholder in `fields`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"prompt template {path} not found (defaults live in {RUBRICS_DIR})")
  text = open(path, encoding="utf-8").read()
  missing = [f for f in fields if f not in text]
  if missing:
    raise ValueError(f"{path}: the template lacks placeholder(s) {missing}")
  return text


def fill(template: str, values: dict[str, str]) -> str:
  """Replaces the {name} placeholders in one pass: inserted answers may contain braces, even
  placeholder names, and are left as they are."""
  pattern = re.compile("|".join(re.escape("{" + k + "}") for k in values))
  return pattern.sub(lambda m: values[m.group(0)[1:-1]], template)


def parse_pointwise(text: str, rubric: Rubric) -> tuple[dict | None, str, str | None]:
  """(scores per criterion or None, rationale, error): "criterion: N" lines, N on the scale."""
  values = {v for v, _ in rubric.scale}
  scores, problems = {}, []
  for name, _ in rubric.criteria:
    found = re.findall(rf"^\W*{re.escape(name)}\W*[:=]\s*(\d+)\b", text, re.I | re.M)
    if len(set(found)) != 1:
      problems.append(f"{name}: {'missing' if not found else 'conflicting ' + str(found)}")
    elif int(found[0]) not in values:
      problems.append(f"{name}: {found[0]} is off the scale")
    else:
      scores[name] = int(found[0])
  m = re.search(r"rationale\W*[:=]\s*(.*)", text, re.I | re.S)
  rationale = m.group(1).strip() if m else text.strip()
  if problems:
    return None, rationale, "; ".join(problems)
  return scores, rationale, None


def parse_pairwise(text: str) -> tuple[str | None, str | None]:
  """("A" | "B" | "tie", None) from a "Verdict: X" line, or (None, why) when absent/ambiguous."""
  found = {m.lower() if m.lower() == "tie" else m.upper() for m in _VERDICT.findall(text)}
  if not found:
    return None, "no 'Verdict: A|B|tie' line"
  if len(found) > 1:
    return None, f"conflicting verdicts {sorted(found)}"
  return found.pop(), None


def _question(row: dict) -> str:
  return row.get("input", "")


def judge_pointwise(judge_fn: JudgeFn, template: str, rubric: Rubric,
                    candidates: dict[str, Sequence[dict]]) -> list[dict]:
  """One row per (system, id): {"key", "id", "system", "score" (mean over criteria) | None,
  "scores", "rationale", "error", "raw", "length"}."""
  items = [(system, row) for system, rows in candidates.items() for row in rows]
  prompts = [fill(template, {"criteria": rubric.criteria_text(), "scale": rubric.scale_text(),
                             "question": _question(row), "answer": row["prediction"]})
             for _, row in items]
  outputs = judge_fn(prompts)
  judged = []
  for (system, row), raw in zip(items, outputs):
    scores, rationale, error = parse_pointwise(raw, rubric)
    judged.append(dict(key=f"{row['id']}|{system}", id=row["id"], system=system,
                       score=float(np.mean(list(scores.values()))) if scores else None,
                       scores=scores, rationale=rationale, error=error, raw=raw,
                       length=len(row["prediction"].split())))
  return judged


def _combined(ab: str | None, ba: str | None) -> str | None:
  """System verdict from the two orders: A of (a, b) and B of (b, a) both mean system a."""
  if ab is None or ba is None:
    return None
  first = {"A": "a", "B": "b", "tie": "tie"}[ab]
  second = {"A": "b", "B": "a", "tie": "tie"}[ba]
  return first if first == second else "tie"


def judge_pairwise(judge_fn: JudgeFn, template: str, rubric: Rubric,
                   candidates: dict[str, Sequence[dict]]) -> list[dict]:
  """One row per (pair of systems, shared id), judged in both orders."""
  jobs = []
  for sys_a, sys_b in itertools.combinations(candidates, 2):
    b_by_id = {r["id"]: r for r in candidates[sys_b]}
    for row_a in candidates[sys_a]:
      if row_a["id"] in b_by_id:
        jobs.append((sys_a, sys_b, row_a, b_by_id[row_a["id"]]))
  prompts = []
  for _, _, row_a, row_b in jobs:
    for first, second in ((row_a, row_b), (row_b, row_a)):
      prompts.append(fill(template, {"criteria": rubric.criteria_text(),
                                     "question": _question(row_a),
                                     "answer_a": first["prediction"],
                                     "answer_b": second["prediction"]}))
  outputs = judge_fn(prompts)
  judged = []
  for k, (sys_a, sys_b, row_a, row_b) in enumerate(jobs):
    orders = {}
    for name, raw in (("order_ab", outputs[2 * k]), ("order_ba", outputs[2 * k + 1])):
      position, error = parse_pairwise(raw)
      orders[name] = {"position": position, "error": error, "raw": raw}
    verdict = _combined(orders["order_ab"]["position"], orders["order_ba"]["position"])
    judged.append(dict(key=f"{row_a['id']}|{sys_a}|{sys_b}", id=row_a["id"], system_a=sys_a,
                       system_b=sys_b, verdict=verdict, **orders,
                       len_a=len(row_a["prediction"].split()),
                       len_b=len(row_b["prediction"].split())))
  return judged


def summarize_pointwise(rows: Sequence[dict], rubric: Rubric, n_samples: int = 1000,
                        seed: int = 0) -> dict:
  out = {"unparseable": sum(r["score"] is None for r in rows), "n": len(rows), "systems": {}}
  for system in dict.fromkeys(r["system"] for r in rows):
    parsed = [r for r in rows if r["system"] == system and r["score"] is not None]
    entry = {"unparseable": sum(r["system"] == system and r["score"] is None for r in rows)}
    for name in ["score"] + [c for c, _ in rubric.criteria]:
      values_N = np.asarray([r["score"] if name == "score" else r["scores"][name]
                             for r in parsed], np.float64)
      entry[name] = bootstrap.interval(lambda idx, v=values_N: float(v[idx].mean()),
                                       len(values_N), n_samples, seed)
    out["systems"][system] = entry
  out["length_bias"] = bias.length_bias(rows, pairwise=False)
  return out


def summarize_pairwise(rows: Sequence[dict], n_samples: int = 1000, seed: int = 0) -> dict:
  """Per pair: wins, ties, unparseable and the win rate of system a (ties count half) with an
  interval; the position-bias report over all rows."""
  pairs = {}
  for sys_a, sys_b in dict.fromkeys((r["system_a"], r["system_b"]) for r in rows):
    sub = [r for r in rows if (r["system_a"], r["system_b"]) == (sys_a, sys_b)]
    decided = [r["verdict"] for r in sub if r["verdict"] is not None]
    wins_N = np.asarray([bias._win(v, "a") for v in decided], np.float64)
    pairs[f"{sys_a} vs {sys_b}"] = dict(
        system_a=sys_a, system_b=sys_b, n=len(sub), wins_a=decided.count("a"),
        wins_b=decided.count("b"), ties=decided.count("tie"),
        unparseable=len(sub) - len(decided),
        win_rate_a=bootstrap.interval(lambda idx: float(wins_N[idx].mean()), len(wins_N),
                                      n_samples, seed))
  n_orders = 2 * len(rows)
  unparsed = sum(r[o]["position"] is None for r in rows for o in ("order_ab", "order_ba"))
  return {"pairs": pairs, "position_bias": bias.position_bias(rows),
          "length_bias": bias.length_bias(rows, pairwise=True),
          "unparseable_single_order": unparsed, "n_single_order": n_orders,
          "unparseable": sum(r["verdict"] is None for r in rows), "n": len(rows)}


def model_judge(loaded, generation) -> JudgeFn:
  """A JudgeFn decoding each prompt as one user turn with a run's model and chat template."""
  from infer.eval import runner
  from model.chat import prompt_messages
  decoder = runner.make_decoder(loaded)

  def judge(prompts: list[str]) -> list[str]:
    rows = [{"id": str(i), "messages": prompt_messages(p)} for i, p in enumerate(prompts)]
    return [r["prediction"] for r in runner.generate(loaded, rows, generation, decoder)]
  return judge
