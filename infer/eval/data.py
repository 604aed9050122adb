"""Evaluation inputs: eval-set and prediction jsonl, the embedded task suite, text for perplexity,
and the named, versioned text-processing steps applied to inputs and predictions.

An eval row is {"id", "input" | "messages", "reference" | "references", "metadata"?,
"slice" | "slices"?}; a prediction row is {"id", "prediction", "reference" | "references",
...}. A malformed line is an error naming the file, the line and the fix.
"""

import glob
import hashlib
import os
import re
from typing import Callable, Sequence

from infer.eval import tasks
from model import chat
from model.files import read_jsonl_objects

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _extract_number(text: str) -> str:
  """The last number in the text with thousands separators removed ("" when none)."""
  found = _NUMBER.findall(text)
  return found[-1].replace(",", "") if found else ""


# A step's behaviour never changes under its name: a new behaviour gets a new version.
STEPS: dict[str, Callable[[str], str]] = {
    "strip@1": str.strip,
    "lower@1": str.lower,
    "first_line@1": lambda t: t.strip().split("\n", 1)[0].strip(),
    "collapse_whitespace@1": lambda t: " ".join(t.split()),
    "extract_number@1": _extract_number,
}


def parse_steps(spec: str | Sequence[str]) -> list[str]:
  """"strip,first_line@1" -> ["strip@1", "first_line@1"]; a bare name takes its latest version."""
  names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
  out = []
  for name in names:
    if "@" not in name:
      versions = sorted((k for k in STEPS if k.split("@")[0] == name),
                        key=lambda k: int(k.split("@")[1]))
      name = versions[-1] if versions else name
    if name not in STEPS:
      raise ValueError(f"unknown processing step {name!r}; choose from {sorted(STEPS)}")
    out.append(name)
  return out


def apply_steps(steps: Sequence[str], text: str) -> str:
  for step in steps:
    text = STEPS[step](text)
  return text


def file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def read_jsonl(path: str) -> list[tuple[str, dict]]:
  """(where, object) per non-blank line; invalid JSON is an error naming file and line."""
  rows = read_jsonl_objects(path, "JSON objects, one per line", '{"id": "1", ...}')
  for where, obj in rows:
    if not isinstance(obj, dict):
      raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  return rows


def _references(where: str, obj: dict, required: bool) -> list[str]:
  if "references" in obj:
    refs = obj["references"]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
      raise ValueError(f"{where}: 'references' must be a non-empty list of strings")
    return list(refs)
  if "reference" in obj:
    if not isinstance(obj["reference"], (str, int, float)) or isinstance(obj["reference"], bool):
      raise ValueError(f"{where}: 'reference' must be a string")
    return [str(obj["reference"])]
  if required:
    raise ValueError(f"{where}: add 'reference' (a string) or 'references' (a list of strings)")
  return []


def _slices(where: str, obj: dict, slice_keys: Sequence[str]) -> list[str]:
  """Labels "key=value" for each slice key found at top level or in "metadata"."""
  metadata = obj.get("metadata", {})
  if not isinstance(metadata, dict):
    raise ValueError(f"{where}: 'metadata' must be an object")
  labels = []
  for key in slice_keys:
    value = obj.get(key, metadata.get(key))
    if value is None:
      continue
    for v in value if isinstance(value, list) else [value]:
      labels.append(f"{key}={v}")
  return labels


def _checked_id(where: str, obj: dict, seen: set) -> str:
  if "id" not in obj or not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
    raise ValueError(f"{where}: add an 'id' (a string or integer) to every row")
  row_id = str(obj["id"])
  if row_id in seen:
    raise ValueError(f"{where}: duplicate id {row_id!r}; ids must be unique")
  seen.add(row_id)
  return row_id


def read_eval_set(path: str, slice_keys: Sequence[str] = ("slice", "task")) -> list[dict]:
  """Rows {"id", "messages", "references", "slices", "metadata"} of an eval-set jsonl."""
  rows, seen = [], set()
  for where, obj in read_jsonl(path):
    row_id = _checked_id(where, obj, seen)
    if "messages" in obj:
      try:
        chat.validate_messages(obj["messages"], final_assistant=False)
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
      messages = [dict(m) for m in obj["messages"]]
    elif isinstance(obj.get("input"), str):
      messages = chat.prompt_messages(obj["input"])
    else:
      raise ValueError(f"{where}: add 'input' (a string) or 'messages' (a list of "
                       "{\"role\", \"content\"} ending with a user turn)")
    rows.append(dict(id=row_id, messages=messages, references=_references(where, obj, True),
                     slices=_slices(where, obj, slice_keys), metadata=obj.get("metadata", {})))
  return rows


def read_predictions(path: str, slice_keys: Sequence[str] = ("slice", "task"),
                     require_reference: bool = True) -> list[dict]:
  """Rows {"id", "prediction", "references", "slices", "metadata", "input"?} of outputs.jsonl."""
  rows, seen = [], set()
  for where, obj in read_jsonl(path):
    row_id = _checked_id(where, obj, seen)
    if not isinstance(obj.get("prediction"), str):
      raise ValueError(f"{where}: add 'prediction' (the system's output, a string)")
    row = dict(id=row_id, prediction=obj["prediction"],
               references=_references(where, obj, require_reference),
               slices=_slices(where, obj, slice_keys), metadata=obj.get("metadata", {}))
    if "messages" in obj or "input" in obj:
      row["input"] = obj.get("input") or chat._context(obj["messages"])[-1]["content"]
    rows.append(row)
  return rows


def suite_rows(n_per_task: int, seed: int = 0,
               task_names: Sequence[str] = tasks.TASK_NAMES) -> list[dict]:
  """The embedded tasks' held-out split as eval rows, one slice per task."""
  rows = []
  for task in task_names:
    for i, ex in enumerate(tasks.examples(task, "heldout", n_per_task, seed)):
      rows.append(dict(id=f"{task}/{i}", messages=chat.prompt_messages(ex["prompt"]),
                       references=[ex["answer"]], slices=[f"task={task}"],
                       metadata={"task": task}))
  return rows


def text_files(spec: str) -> list[str]:
  """A file, a directory (its .txt / .jsonl / .md files), a glob or a comma-separated list."""
  paths = []
  for part in [p for p in spec.split(",") if p]:
    if os.path.isdir(part):
      found = sorted(f for ext in ("txt", "jsonl", "md")
                     for f in glob.glob(os.path.join(part, f"**/*.{ext}"), recursive=True))
    elif os.path.isfile(part):
      found = [part]
    else:
      found = sorted(glob.glob(part))
    if not found:
      raise FileNotFoundError(f"--data={part!r} matches no file; give a .txt/.jsonl file, a "
                              "directory holding some, or a glob")
    paths.extend(found)
  return paths


def read_documents(spec: str, jsonl_field: str = "text") -> list[tuple[str, str]]:
  """(name, text) per document: a whole .txt/.md file, or each jsonl line's `jsonl_field`."""
  docs = []
  for path in text_files(spec):
    if path.endswith(".jsonl"):
      for where, obj in read_jsonl(path):
        if not isinstance(obj.get(jsonl_field), str):
          raise ValueError(f"{where}: no string field {jsonl_field!r}; pass --jsonl_field")
        docs.append((where, obj[jsonl_field]))
    else:
      with open(path, encoding="utf-8") as f:
        docs.append((path, f.read()))
  docs = [(name, text) for name, text in docs if text]
  if not docs:
    raise ValueError(f"--data={spec!r} holds no text")
  return docs
