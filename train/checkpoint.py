"""The training run's view of a run directory: its full Config, written and read back.

The directory layout and checkpoint items belong to model/store.py (decoding reads the
same files without importing train/); this file adds the sections only training knows
(data, train, mesh) and the strict parse of all of them.
"""

import os

from model import store
from model.store import CONFIG_FILE, METRICS_FILE, TOKENIZER_DIR  # noqa: F401  (re-exported)
from train.config import Config


def save_config(workdir: str, config: Config) -> None:
  store.write_run_config(workdir, config.to_dict())


def load_config(workdir: str) -> Config:
  """The run's Config; an unknown key or a newer format is a clear error."""
  run = store.read_run_config(workdir)
  return Config.from_dict(run.sections, os.path.join(workdir, CONFIG_FILE))


def format_version(workdir: str) -> int:
  return store.read_run_config(workdir).version
