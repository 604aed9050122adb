"""A user's eval set scored during training, every `eval_every` steps and at the end.

`--config.train.eval_set=my_eval.jsonl` (the `infer.evaluate` eval-set format: id, input
or messages, reference(s), slice labels) is decoded greedily with the run's chat template
through the same runner `infer.evaluate` uses, and each metric of
`--config.train.eval_set_metrics` lands in the log and in metrics.jsonl as
`eval_set/<metric>` (per slice as `eval_set/<slice>/<metric>`). The rows are read and
checked once, before training starts.
"""

import time

from absl import logging

from infer.decode import Decoder
from infer.eval import data as eval_data
from infer.eval import runner, scoring
from train.task_eval import training_view


def make_evaluator(config, data, trainer):
  """A function (state, frozen) -> {"eval_set/...": value}, or None without an eval set."""
  path = config.train.eval_set
  if not path:
    return None
  rows = eval_data.read_eval_set(path)
  names = [m.strip() for m in config.train.eval_set_metrics.split(",") if m.strip()]
  scoring.score_rows([dict(rows[0], prediction="")], names, n_samples=0)  # unknown names fail now
  generation = runner.GenerationConfig(max_new_tokens=config.train.task_eval_tokens,
                                       template=data.template.name if data.template else "raw")
  decoder = Decoder(config.model, trainer.mesh, config.peft, config.model_quant)

  def evaluate(state, frozen) -> dict:
    start = time.perf_counter()
    loaded = training_view(decoder, trainer.full_params(state, frozen), data.tokenizer,
                           data.template, step=int(state.step))
    predicted = runner.generate(loaded, rows, generation, decoder)
    scores, _ = scoring.score_rows(predicted, names, n_samples=0)
    result = {f"eval_set/{name}": value["value"] for name, value in scores.items()
              if isinstance(value, dict) and "value" in value}
    for label, slice_scores in scores.get("slices", {}).items():
      result.update({f"eval_set/{label}/{name}": value["value"]
                     for name, value in slice_scores.items() if "value" in value})
    logging.info("eval set %s (%d rows, %.1fs): %s", path, len(rows),
                 time.perf_counter() - start,
                 " ".join(f"{k.split('/', 1)[1]}={v:.3f}" for k, v in result.items()
                          if k.count("/") == 1))
    return result
  return evaluate
