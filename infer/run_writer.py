"""Writes a decode-only run directory (params only): export, quantize and hf_import."""

import os
import shutil
from typing import Callable

from model import store


def write_params_run(src_workdir: str, out: str, sections: dict, step: int, params) -> None:
  """Writes a decode-only run dir: config.json from `sections`, src's tokenizer, data.json
  and chat template, and one params-only checkpoint `step`. Shared with infer/quantize.py.
  """
  def copy_run_files(tmp: str) -> None:
    for name in (store.DATA_FILE, store.CHAT_TEMPLATE_FILE):
      if os.path.exists(os.path.join(src_workdir, name)):
        shutil.copy2(os.path.join(src_workdir, name), os.path.join(tmp, name))
    shutil.copytree(os.path.join(src_workdir, store.TOKENIZER_DIR),
                    os.path.join(tmp, store.TOKENIZER_DIR))
  write_run_atomically(out, sections, step, params, copy_run_files)


def write_run_atomically(out: str, sections: dict, step: int, params,
                         add_files: Callable[[str], None], flag: str = "--out") -> None:
  """config.json from `sections`, what `add_files(tmp_dir)` writes (the tokenizer at least)
  and one params-only checkpoint `step`, built beside `out` and renamed into place."""
  if os.path.exists(out):
    raise ValueError(f"{flag}={out} already exists; pass a new directory")
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = out.rstrip("/") + f".tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    os.makedirs(tmp)
    store.write_run_config(tmp, sections)
    add_files(tmp)
    manager = store.checkpoint_manager(tmp, async_save=False)
    store.save_checkpoint(manager, step, params, force=True)
    manager.wait_until_finished()
    manager.close()
    os.replace(tmp, out)  # the run dir appears whole or not at all
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
