r"""Exports a run directory as a decode-only run directory, optionally merging LoRA.

  python -m infer.export --workdir=runs/sft_lora --merge_lora --out=runs/sft_lora_merged

The output holds config.json (peft reset to "full" when merged), the tokenizer, the chat
template, data.json and one checkpoint with parameters only (no optimizer state). A
merged directory is a plain model: it decodes without PEFT code and can start new runs
with --init_from.
"""

import dataclasses
import os
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory to export (latest checkpoint).")
flags.DEFINE_string("checkpoint", None, "A specific checkpoint: DIR/checkpoints/STEP.")
flags.DEFINE_string("out", None, "New run directory to write (must not exist).")
flags.DEFINE_bool("merge_lora", False, "Fold LoRA factors into the base kernels "
                  "(W + alpha/rank * A B) and drop them.")


def export(path: str, out: str, merge_lora: bool) -> dict:
  """Writes the export; returns a summary (step, parameter counts, seconds)."""
  import jax  # pylint: disable=g-import-not-at-top

  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  from model import peft as peft_lib  # pylint: disable=g-import-not-at-top
  from model import store  # pylint: disable=g-import-not-at-top
  from model.peft import PeftConfig  # pylint: disable=g-import-not-at-top

  if os.path.exists(out):
    raise ValueError(f"--out={out} already exists; pass a new directory")
  start = time.perf_counter()
  loaded = load_model(path)
  run = store.read_run_config(loaded.workdir)
  params, peft = loaded.params, loaded.peft
  if merge_lora:
    if peft.method != "lora":
      raise ValueError(f"--merge_lora needs a LoRA run, but {loaded.workdir} is "
                       f"peft.method={peft.method!r}; adapters and soft prompts have no "
                       "plain-weight equivalent (export without --merge_lora)")
    if loaded.quant.stored:  # QLoRA: the merged model is float (base dequantized first)
      from infer.loading import abstract_params  # pylint: disable=g-import-not-at-top
      from model import quant  # pylint: disable=g-import-not-at-top
      params = quant.dequantize_params(params, quant.kernel_shapes(abstract_params(
          loaded.model_config, peft, loaded.mesh)))
    params = peft_lib.merge_lora(params, peft, loaded.model_config)
    peft = PeftConfig()
  elif peft.method == "lora":
    logging.warning("exporting LoRA factors unmerged; pass --merge_lora for a plain model")
  sections = dict(run.sections)
  sections["peft"] = dataclasses.asdict(peft)
  from infer.run_writer import write_params_run  # pylint: disable=g-import-not-at-top
  write_params_run(loaded.workdir, out, sections, loaded.step, params)
  n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  summary = {"out": out, "step": loaded.step, "params": n_params, "merged": merge_lora,
             "seconds": round(time.perf_counter() - start, 2)}
  logging.info("exported %s step %d -> %s (%s parameters%s) in %.1fs", loaded.workdir,
               loaded.step, out, f"{n_params:,}", ", LoRA merged" if merge_lora else "",
               summary["seconds"])
  return summary


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from infer import cli  # pylint: disable=g-import-not-at-top

  def body():
    path = cli.source_run(FLAGS.checkpoint, FLAGS.workdir, FLAGS.out)
    print(export(path, FLAGS.out, FLAGS.merge_lora))
  cli.run_cli("export", body)


def main():
  app.run(_main)


if __name__ == "__main__":
  main()
