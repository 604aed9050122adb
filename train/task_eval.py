"""Exact-match evaluation on held-out tasks: greedy decoding, then each task's checker.

Training calls it every `eval_every` steps and at the end (train may use the decoder;
infer never imports train). Rows are {"task", "answer", "prompt" | "messages"}; a task the
embedded set does not know is scored by exact match of the normalised text
(train/data/tasks.py `score`) against "answer" or the final reply.
"""

import numpy as np

from infer.decode import Decoder
from infer.eval import runner
from infer.loading import LoadedModel
from train.data import tasks as tasks_lib
from train.data.sft import reference_answer, row_messages

CHUNK = 32  # prompts decoded per batch; the last chunk is padded to reuse the program


def _score(row, prediction: str) -> float:
  return tasks_lib.score(row.get("task", "data"), prediction, reference_answer(row))


def training_view(decoder: Decoder, params, tokenizer, template, step: int = 0) -> LoadedModel:
  """The model being trained, seen as a loaded run, for infer.eval's runner."""
  return LoadedModel(model_config=decoder.config, peft=decoder.peft, tokenizer=tokenizer,
                     params=params, mesh=decoder.mesh, workdir="", step=step,
                     chat_template=template, quant=decoder.quant)


def generate_answers(decoder: Decoder, params, tokenizer, template, rows,
                     max_new_tokens: int) -> list[str]:
  """Greedy completions (text up to EOS, cut at the turn end) for every row's prompt,
  encoded exactly as the prompt part of a training example (infer.eval's runner: an
  over-long prompt keeps its end, so that the answer fits the context)."""
  room = decoder.config.max_len - decoder.n_prompt - max_new_tokens
  if room < 1:
    raise ValueError(f"task_eval_tokens={max_new_tokens} leaves no room for a prompt in the "
                     f"context of {decoder.config.max_len}; lower --config.train.task_eval_tokens")
  prompts = [{"messages": row_messages(row)[:-1]} for row in rows]
  generation = runner.GenerationConfig(max_new_tokens=max_new_tokens, batch_size=CHUNK)
  loaded = training_view(decoder, params, tokenizer, template)
  return [r["prediction"] for r in runner.generate(loaded, prompts, generation, decoder)]


def evaluate_tasks(decoder: Decoder, params, tokenizer, template, rows,
                   max_new_tokens: int) -> dict:
  """{"exact_match": overall, "exact_match/<task>": per task} on `rows`."""
  answers = generate_answers(decoder, params, tokenizer, template, rows, max_new_tokens)
  by_task: dict[str, list[float]] = {}
  for row, answer in zip(rows, answers):
    by_task.setdefault(row.get("task", "data"), []).append(_score(row, answer))
  result = {f"exact_match/{task}": float(np.mean(s)) for task, s in sorted(by_task.items())}
  result["exact_match"] = float(np.mean([s for v in by_task.values() for s in v]))
  return result


def select_rows(rows, per_task: int) -> list:
  """The first `per_task` rows of each task (a fixed subset, the same at every eval)."""
  counts: dict[str, int] = {}
  chosen = []
  for row in rows:
    task = row.get("task", "data")
    if counts.get(task, 0) < per_task:
      counts[task] = counts.get(task, 0) + 1
      chosen.append(row)
  return chosen
