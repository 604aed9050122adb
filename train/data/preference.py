"""Preference pairs: jsonl or embedded tasks -> chosen / rejected token rows -> batches.

A jsonl row is one of
  {"prompt": str, "chosen": str, "rejected": str}
  {"messages": [... ending with the user's turn], "chosen": str, "rejected": str}
  {"chosen": [messages ending with the assistant], "rejected": [same context, other reply]}
optionally with "margin" (a number, the reward model's Bradley-Terry margin for this pair),
"task" and "answer". Without a file, pairs come from the embedded tasks
(`embedded_pairs`): chosen is the correct answer, rejected a plausible wrong one.

Both replies are encoded like SFT examples (train/data/sft.py `encode_example`: weight 1 on
the reply and the closing eos) and padded one per row, so a batch holds, for B pairs,
`chosen_{inputs,targets,weights}` and `rejected_{inputs,targets,weights}`, each [B, seq_len],
row i of one pairing with row i of the other, plus `margin` [B, 1] (batch arrays are 2-D:
the batch sharding splits their first axis).
"""

import os
from typing import Mapping, Sequence

import numpy as np
from absl import logging

from model import chat
from model.files import read_jsonl_objects
from train.data import sft
from train.data import tasks as tasks_lib
from train.data.rows import RowDataset

SIDES = ("chosen", "rejected")
PAIR_KEYS = tuple(f"{side}_{k}" for side in SIDES for k in ("inputs", "targets", "weights"))
ROW_KEYS = PAIR_KEYS + ("margin",)
_HINT = ("expected {\"prompt\", \"chosen\", \"rejected\"} strings, {\"messages\": [... user "
         "turn], \"chosen\", \"rejected\"}, or \"chosen\" and \"rejected\" message lists that "
         "share their context")


def normalize_pair(obj, where: str = "row") -> dict:
  """A checked pair {"context", "chosen", "rejected", "margin", [task, answer]}."""
  if not isinstance(obj, dict):
    raise ValueError(f"{where}: {_HINT}, got {sft._short(obj)}")  # pylint: disable=protected-access
  if "chosen" not in obj or "rejected" not in obj:
    raise ValueError(f"{where}: a pair needs both 'chosen' and 'rejected'; {_HINT}, got keys "
                     f"{sorted(obj)}")
  chosen, rejected = obj["chosen"], obj["rejected"]
  try:
    if isinstance(chosen, list) or isinstance(rejected, list):
      if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise ValueError("'chosen' and 'rejected' must both be strings or both message lists")
      for side in (chosen, rejected):
        chat.validate_messages(side, final_assistant=True)
      if chosen[:-1] != rejected[:-1]:
        raise ValueError("'chosen' and 'rejected' conversations differ before the final reply; "
                         "a pair must share its context")
      context = [dict(m) for m in chosen[:-1]]
      chosen, rejected = chosen[-1]["content"], rejected[-1]["content"]
    else:
      for key in SIDES:
        if not isinstance(obj[key], str):
          raise ValueError(f"'{key}' must be a string, got {sft._short(obj[key])}")  # pylint: disable=protected-access
      if "messages" in obj:
        chat.validate_messages(obj["messages"], final_assistant=False)
        context = [dict(m) for m in obj["messages"]]
      elif isinstance(obj.get("prompt"), str):
        context = chat.prompt_messages(obj["prompt"])
      else:
        raise ValueError(f"{_HINT}; 'prompt' is missing or not a string")
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  if chosen == rejected:
    raise ValueError(f"{where}: 'chosen' and 'rejected' are the same text; drop the row")
  margin = obj.get("margin", 0.0)
  if not isinstance(margin, (int, float)) or isinstance(margin, bool):
    raise ValueError(f"{where}: 'margin' must be a number, got {sft._short(margin)}")  # pylint: disable=protected-access
  row = dict(context=context, chosen=chosen, rejected=rejected, margin=float(margin))
  for key in ("task", "answer", "kind"):
    if key in obj:
      row[key] = str(obj[key])
  # For hashing (sft.split_rows) and exact-match evaluation (train/task_eval.py).
  row["messages"] = context + [{"role": "assistant", "content": chosen}]
  return row


def read_jsonl(path: str) -> list[dict]:
  """Pairs of a preference jsonl (blank lines skipped); errors name the file and line."""
  lines = read_jsonl_objects(
      path, "preference pairs (or an empty data path for the embedded pairs)",
      '{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}')
  return [normalize_pair(obj, where) for where, obj in lines]


# -- embedded pairs ---------------------------------------------------------------------------

def _number_variants(answer: str) -> list[tuple[str, str]]:
  value = int(float(answer))
  out = [("off_by_one", str(value + 1)), ("off_by_one", str(value - 1))]
  if abs(value) >= 10:
    out.append(("digit_swap", str(value)[::-1]))
    out.append(("magnitude", str(value * 10)))
  return out


def _wrong_answers(task: str, prompt: str, answer: str, pool: Sequence[str]) -> list[tuple[str, str]]:
  """(kind, wrong answer) candidates for one example, most plausible first."""
  if task in tasks_lib.NUMERIC_TASKS:
    out = _number_variants(answer)
    if task == "arithmetic":
      a, op, b = prompt[len("What is "):-1].split()
      other = {"+": int(a) - int(b), "-": int(a) + int(b), "*": int(a) + int(b)}[op]
      out.append(("wrong_operation", str(other)))
    return out
  if task == "reverse":
    word = prompt.split(": ", 1)[1]
    swapped = answer[1] + answer[0] + answer[2:]
    return [("not_reversed", word), ("letters_swapped", swapped), ("letter_dropped", answer[:-1])]
  if task == "case":
    return [("wrong_case", v) for v in (answer.lower(), answer.upper(), answer.capitalize(),
                                        answer.swapcase())]
  if task == "sort":
    values = answer.split()
    given = prompt.split(": ", 1)[1]
    bumped = values[:-1] + [str(int(values[-1]) + 1)]
    return [("wrong_order", " ".join(reversed(values))), ("unsorted", given),
            ("off_by_one", " ".join(bumped))]
  return [("other_answer", a) for a in pool]


def embedded_pairs(split: str, n_per_task: int, seed: int = 0,
                   task_names: Sequence[str] = tasks_lib.TASK_NAMES) -> list[dict]:
  """Pairs from the embedded tasks' `split`: chosen = the answer, rejected = a wrong one.

  Deterministic in (split, n_per_task, seed). The wrong answer is drawn among candidates
  of several kinds (off-by-one and digit-swapped numbers, a wrong operation, wrong order,
  wrong case, unreversed words, another question's answer) and must fail `tasks.score`.
  """
  pairs = []
  for task in task_names:
    rows = tasks_lib.examples(task, split, n_per_task, seed)
    pool = sorted({r["answer"] for r in rows})
    rng = np.random.default_rng(np.random.SeedSequence([seed & (2**63 - 1), 3,
                                                        sum(map(ord, task + split))]))
    for row in rows:
      others = [a for a in pool if a != row["answer"]]
      others = [others[i] for i in rng.permutation(len(others))[:4]] if others else []
      candidates = [(k, w) for k, w in _wrong_answers(task, row["prompt"], row["answer"], others)
                    if w and tasks_lib.score(task, w, row["answer"]) == 0.0]
      if not candidates:
        candidates = [("appended", row["answer"] + " x")]
      kind, wrong = candidates[int(rng.integers(len(candidates)))]
      pairs.append(dict(task=task, prompt=row["prompt"], chosen=row["answer"], rejected=wrong,
                        answer=row["answer"], kind=kind))
  order = np.random.default_rng(np.random.SeedSequence([seed & (2**63 - 1), 4])).permutation(
      len(pairs))
  return [normalize_pair(pairs[i], f"embedded pair {i}") for i in order]


# -- encoding and batches ---------------------------------------------------------------------

def encode_pairs(tokenizer, template: chat.ChatTemplate, pairs: Sequence[Mapping],
                 seq_len: int) -> tuple[dict, dict]:
  """Pairs -> rows {chosen_*, rejected_* [n, seq_len], margin [n, 1]} and counts.

  Each reply is an SFT example of the shared context, shifted (inputs t_0.., targets t_1..)
  and padded to seq_len; an over-long one keeps its start. A pair whose chosen or
  rejected reply has no target token left within seq_len is dropped (with a warning).
  """
  pad_id = max(0, tokenizer.pad_id)
  out = {k: [] for k in ROW_KEYS}
  truncated = dropped = 0
  for pair in pairs:
    sides = {}
    for side in SIDES:
      row = {"messages": pair["context"] + [{"role": "assistant", "content": pair[side]}]}
      tokens, weights = sft.encode_example(tokenizer, template, row)
      if tokens.size > seq_len + 1:
        tokens, weights = tokens[:seq_len + 1], weights[:seq_len + 1]
        truncated += 1
      sides[side] = (tokens, weights)
    if any(not np.any(w[1:] > 0) for _, w in sides.values()):
      dropped += 1
      continue
    for side, (tokens, weights) in sides.items():
      n = tokens.size - 1
      inputs, targets = np.full(seq_len, pad_id, np.int32), np.full(seq_len, pad_id, np.int32)
      w = np.zeros(seq_len, np.float32)
      inputs[:n], targets[:n], w[:n] = tokens[:-1], tokens[1:], weights[1:]
      out[f"{side}_inputs"].append(inputs)
      out[f"{side}_targets"].append(targets)
      out[f"{side}_weights"].append(w)
    out["margin"].append(np.float32(pair.get("margin", 0.0)))
  if truncated:
    logging.warning("%d preference replies are longer than seq_len+1 = %d tokens: truncated "
                    "(raise --config.data.seq_len to keep them whole)", truncated, seq_len + 1)
  if dropped:
    logging.warning("dropped %d of %d pairs with a reply outside seq_len = %d (raise "
                    "--config.data.seq_len or shorten the prompts)", dropped, len(pairs), seq_len)
  rows = {k: (np.stack(v) if v else np.zeros((0, seq_len), np.int32 if "weights" not in k
                                              else np.float32))
          for k, v in out.items() if k != "margin"}
  rows["margin"] = np.asarray(out["margin"], np.float32).reshape(-1, 1)
  return rows, dict(n_pairs=len(pairs), kept=len(pairs) - dropped, truncated=truncated,
                    dropped=dropped)


class PreferenceDataset(RowDataset):
  """Pairs with TokenDataset's stateless (seed, step) batching; batch_size counts pairs."""

  def __init__(self, rows: Mapping[str, np.ndarray], name: str = "preference"):
    missing = [k for k in ROW_KEYS if k not in rows]
    if missing:
      raise ValueError(f"preference rows need keys {list(ROW_KEYS)}; missing {missing} (build "
                       "them with train.data.preference.encode_pairs)")
    self.rows = {k: np.asarray(rows[k]) for k in ROW_KEYS}
    self.name = name
    self.n_windows, self.seq_len = self.rows["chosen_inputs"].shape
    self.n_tokens = 2 * self.n_windows * self.seq_len
    self.tokens_per_epoch = self.n_tokens
    self._perms = {}
    self.check_batch_size(1)

  def check_batch_size(self, batch_size: int) -> None:
    if self.n_windows == 0:
      raise ValueError(f"the {self.name} preference split has no pairs (none given, or every "
                       f"one dropped at seq_len {self.seq_len}); add pairs or raise "
                       "--config.data.seq_len")
    if self.n_windows < batch_size:
      raise ValueError(f"the {self.name} preference split has {self.n_windows} pairs but one "
                       f"batch needs {batch_size}; add pairs or lower --config.train.batch_size")



def build_preference_datasets(tokenizer, template: chat.ChatTemplate | str, seq_len: int,
                              data_path: str = "", n_train_per_task: int = 400,
                              n_heldout_per_task: int = 20, seed: int = 0,
                              val_fraction: float = 0.05,
                              task_names: Sequence[str] = tasks_lib.TASK_NAMES):
  """-> (train_ds, val_ds, heldout_rows, info).

  Embedded: train pairs from the tasks' train split, validation pairs from their held-out
  split (prompts never trained on), and the held-out task rows for exact match. A jsonl
  is split by content hash; its validation pairs double as the held-out rows.
  """
  if isinstance(template, str):
    template = chat.get_template(template)
  if data_path:
    train_pairs, val_pairs = sft.split_rows(read_jsonl(data_path), val_fraction)
    heldout = [dict(messages=p["messages"], task=p.get("task", "data"),
                    answer=p.get("answer", p["chosen"])) for p in val_pairs]
    source = os.path.abspath(data_path)
  else:
    train_pairs = embedded_pairs("train", n_train_per_task, seed, task_names)
    val_pairs = embedded_pairs("heldout", n_heldout_per_task, seed, task_names)
    heldout = tasks_lib.mixture("heldout", n_heldout_per_task, seed, task_names)
    source = "tasks"
  train_rows, train_stats = encode_pairs(tokenizer, template, train_pairs, seq_len)
  val_rows, val_stats = encode_pairs(tokenizer, template, val_pairs, seq_len)
  train_ds = PreferenceDataset(train_rows, name="train")
  val_ds = PreferenceDataset(val_rows, name="val")
  kinds: dict[str, int] = {}
  for p in train_pairs:
    kinds[p.get("kind", "data")] = kinds.get(p.get("kind", "data"), 0) + 1
  info = dict(source=source, template=template.name, seq_len=seq_len, seed=seed, kind="preference",
              n_train_pairs=train_ds.n_windows, n_val_pairs=val_ds.n_windows,
              n_heldout=len(heldout), rejected_kinds=kinds, train=train_stats, val=val_stats)
  logging.info("preference data from %s: %d train pairs, %d validation pairs, %d held-out "
               "rows; rejected kinds %s", source, train_ds.n_windows, val_ds.n_windows,
               len(heldout), kinds)
  return train_ds, val_ds, heldout, info
