"""A robustness eval set: the embedded tasks' held-out prompts under named perturbations.

Each perturbation is a deterministic text rewrite that keeps the task's answer valid:

  original              the prompt as it is
  extra_spaces          every space doubled
  upper                 the prompt upper-cased
  trailing_instruction  "\\nAnswer briefly." appended
  numbers_as_words      integers written as English words ("7" -> "seven")

A (task, perturbation) pair where the rewrite would change the answer or has nothing to act
on is skipped; `SKIPPED` lists each with its reason. Every row carries the slice labels
"slice=<perturbation>", "task=<task>" and "slice=<perturbation>/task=<task>", so the per-slice
scores of infer.evaluate show how much each perturbation costs.
"""

import re
from typing import Callable, Sequence

from infer.eval import tasks

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_INTEGER = re.compile(r"(?<![\w.])\d+(?!\w|\.\d)")  # whole integers, not parts of names
TRAILING_INSTRUCTION = "\nAnswer briefly."


def number_words(n: int) -> str:
  """English words for 0 <= n < 1,000,000: 42 -> "forty-two", 5000 -> "five thousand"."""
  if not 0 <= n < 1_000_000:
    raise ValueError(f"number_words covers 0..999999, got {n}")
  if n < 20:
    return _ONES[n]
  if n < 100:
    return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
  if n < 1000:
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
  rest = n % 1000
  return number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_words(rest))


def _numbers_as_words(prompt: str) -> str:
  return _INTEGER.sub(lambda m: number_words(int(m.group(0))) if int(m.group(0)) < 1_000_000
                      else m.group(0), prompt)


PERTURBATIONS: dict[str, Callable[[str], str]] = {
    "original": lambda p: p,
    "extra_spaces": lambda p: p.replace(" ", "  "),
    "upper": str.upper,
    "trailing_instruction": lambda p: p + TRAILING_INSTRUCTION,
    "numbers_as_words": _numbers_as_words,
}
NUMBER_TASKS = ("arithmetic", "units")  # the tasks whose prompts are about numbers
SKIPPED: dict[tuple[str, str], str] = {
    ("case", "upper"): "the answer depends on the prompt's letter case",
    ("stdlib", "upper"): "the prompt names case-sensitive Python identifiers",
    ("units", "upper"): "unit symbols are case-sensitive (mL is not ML)",
    **{(task, "numbers_as_words"): "its numbers are not quantities to compute with"
       for task in tasks.TASK_NAMES if task not in NUMBER_TASKS},
}


def _check(names: Sequence[str]) -> None:
  unknown = [n for n in names if n not in PERTURBATIONS]
  if unknown:
    raise ValueError(f"unknown perturbation(s) {unknown}; choose from {list(PERTURBATIONS)}")


def perturb(task: str, prompt: str, perturbation: str) -> str | None:
  """The perturbed prompt, or None when (task, perturbation) is in SKIPPED."""
  _check([perturbation])
  if (task, perturbation) in SKIPPED:
    return None
  return PERTURBATIONS[perturbation](prompt)


def eval_set(n_per_task: int, seed: int = 0, task_names: Sequence[str] = tasks.TASK_NAMES,
             perturbations: Sequence[str] = tuple(PERTURBATIONS)) -> list[dict]:
  """Eval-set jsonl rows {"id", "input", "reference", "slice", "task", "metadata"}: each
  held-out example under each applicable perturbation; the same arguments give the same rows."""
  _check(perturbations)
  for task in task_names:
    tasks._check_task(task)  # pylint: disable=protected-access
  rows = []
  for task in task_names:
    for i, ex in enumerate(tasks.examples(task, "heldout", n_per_task, seed)):
      for name in perturbations:
        prompt = perturb(task, ex["prompt"], name)
        if prompt is not None:
          rows.append(dict(id=f"{name}/{task}/{i}", input=prompt, reference=ex["answer"],
                           slice=name, task=task,
                           metadata=dict(task=task, perturbation=name, original=ex["prompt"])))
  return rows


def suite_rows(n_per_task: int, seed: int = 0,
               task_names: Sequence[str] = tasks.TASK_NAMES,
               perturbations: Sequence[str] = tuple(PERTURBATIONS)) -> list[dict]:
  """`eval_set` as runner rows, sliced by perturbation, task and both."""
  from model import chat
  return [dict(id=r["id"], messages=chat.prompt_messages(r["input"]), references=[r["reference"]],
               slices=[f"slice={r['slice']}", f"task={r['task']}",
                       f"slice={r['slice']}/task={r['task']}"],
               metadata=r["metadata"])
          for r in eval_set(n_per_task, seed, task_names, perturbations)]


def write_set(path: str, n_per_task: int, seed: int = 0,
              task_names: Sequence[str] = tasks.TASK_NAMES,
              perturbations: Sequence[str] = tuple(PERTURBATIONS)) -> int:
  """Writes `eval_set` to a jsonl that `infer.evaluate --data` reads; returns the row count."""
  rows = eval_set(n_per_task, seed, task_names, perturbations)
  tasks.write_jsonl(path, rows)
  return len(rows)
