r"""Trains a decoder-only transformer; rerunning on the same --workdir resumes.

  python -m train.main --config=experiments/quickstart.py --workdir=runs/qs \
      --config.model.n_layers=4 --config.train.steps=200 --data='my_texts/*.txt'

Any config field can be overridden with --config.SECTION.FIELD=VALUE (see train/config.py).
"""

import dataclasses
import json
import sys

from absl import app, flags, logging

from train import distributed, logs
from train.config import build_config, split_config_overrides

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "experiments/quickstart.py",
                    "Config file defining get_config(); `path.py:arg` passes an argument.")
flags.DEFINE_string("workdir", None, "Run directory (created, or resumed if it has checkpoints).")
flags.DEFINE_string("data", None, "Shortcut for --config.data.data: text/jsonl path, dir or glob.")
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
  logs.quiet_library_logs()
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    config = build_config(FLAGS.config, _OVERRIDES)
    if FLAGS.data is not None:
      config = dataclasses.replace(config, data=dataclasses.replace(config.data, data=FLAGS.data))
    if FLAGS.print_config:
      print(config.to_json())
      return
    from train.loop import TrainingDiverged, train  # imports jax: after distributed.initialize
    try:
      summary = train(config, FLAGS.workdir, FLAGS.stop_at_step)
    except TrainingDiverged as e:
      sys.exit(f"error: {e}")
  except (ValueError, FileNotFoundError, TypeError) as e:
    sys.exit(f"error: {e}")
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
