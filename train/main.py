r"""Trains a decoder-only transformer; rerunning on the same --workdir resumes.

  python -m train.main --config=experiments/quickstart.py --workdir=runs/qs \
      --config.model.n_layers=4 --config.train.steps=200 --data='my_texts/*.txt'
  python -m train.main --config=experiments/sft.py --workdir=runs/sft_lora \
      --init_from=runs/quickstart --config.peft.method=lora --config.peft.rank=8

Any config field can be overridden with --config.SECTION.FIELD=VALUE (see train/config.py).
"""

import json
import sys

from absl import app, flags, logging

from infer import cli
from train import distributed
from train.config import build_config, split_config_overrides

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "experiments/quickstart.py",
                    "Config file defining get_config(); `path.py:arg` passes an argument.")
flags.DEFINE_string("workdir", None, "Run directory (created, or resumed if it has checkpoints).")
flags.DEFINE_string("data", None, "Shortcut for --config.data.data: text/jsonl path, dir or glob.")
flags.DEFINE_string("init_from", None, "Shortcut for --config.train.init_from: a run directory "
                    "whose parameters and tokenizer start this run (fine-tuning).")
flags.DEFINE_string("coordinator_address", "", "Multi-process: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", 0, "Multi-process: total number of processes.")
flags.DEFINE_integer("process_id", -1, "Multi-process: this process's index.")
flags.DEFINE_integer("stop_at_step", None, "Save and stop at this step (rerun to continue).")
flags.DEFINE_bool("print_config", False, "Print the resolved config as JSON and exit.")

_OVERRIDES = []


def _main(argv):
  del argv
  if not FLAGS.workdir and not FLAGS.print_config:
    raise app.UsageError("--workdir is required (a new or existing run directory)")

  def body():
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    overrides = list(_OVERRIDES)
    if FLAGS.data is not None:
      overrides.append(("data.data", FLAGS.data))
    if FLAGS.init_from is not None:
      overrides.append(("train.init_from", FLAGS.init_from))
    config = build_config(FLAGS.config, overrides)
    if FLAGS.print_config:
      print(config.to_json())
      return None
    from train.loop import TrainingDiverged, train  # imports jax: after distributed.initialize
    try:
      return train(config, FLAGS.workdir, FLAGS.stop_at_step)
    except TrainingDiverged as e:
      raise ValueError(str(e)) from None

  summary = cli.run_cli("train", body, extra_errors=(TypeError,))
  if summary is None:
    return
  logging.info("summary: %s", json.dumps(summary))
  print(json.dumps(summary))


def main():
  """Entry point: pulls --config.a.b=v overrides out before absl parses the rest."""
  global _OVERRIDES
  try:
    argv, _OVERRIDES = split_config_overrides(sys.argv)
  except ValueError as e:
    sys.exit(f"error: {e}")
  app.run(_main, argv=argv)


if __name__ == "__main__":
  main()
