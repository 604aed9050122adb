r"""Imports a local Hugging Face model directory as a run directory.

  python -m infer.hf_import --hf_dir=/path/to/Llama-3.2-1B --workdir=runs/llama1b

Reads config.json (every key must be understood: model/hf/configs.py), the safetensors
weights (one file or shards with model.safetensors.index.json; float32 / bfloat16 /
float16), streamed tensor by tensor onto the mesh (--mesh, default replicated), and the
tokenizer (tokenizer.json, or a sentencepiece tokenizer.model converted with
transformers). Writes a run directory (model/store.py) that infer.generate, infer.evaluate
and train.main --init_from read like any other: config.json (float32 parameters, plus an
"hf" section naming the source architecture), tokenizer/, one params-only checkpoint (step
0). Supported: llama, mistral, qwen2, mixtral, gpt2.
"""

import dataclasses
import os
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the CLI flags (at run time, so tests can import the library functions of
  both hf_import and hf_export in one process)."""
  flags.DEFINE_string("hf_dir", None, "Local Hugging Face model directory (config.json, "
                      "*.safetensors, tokenizer files).")
  flags.DEFINE_string("workdir", None, "Run directory to create (must not exist).")
  flags.DEFINE_string("tokenizer_dir", None, "Where the tokenizer files are, if not in --hf_dir.")
  flags.DEFINE_string("mesh", "", "Mesh to load onto, e.g. fsdp=4,tensor=2 (default: all "
                      "devices on data, i.e. replicated).")


HF_SECTION = "hf"


def load_hf(hf_dir: str, mesh=None):
  """(model_config, params on `mesh`, HfInfo) of a HF model directory."""
  from infer.loading import abstract_params  # pylint: disable=g-import-not-at-top
  from model import sharding  # pylint: disable=g-import-not-at-top
  from model.hf import configs, convert  # pylint: disable=g-import-not-at-top
  from model.hf.safetensors_io import Reader  # pylint: disable=g-import-not-at-top
  from model.mesh import MeshConfig  # pylint: disable=g-import-not-at-top
  from model.peft import PeftConfig  # pylint: disable=g-import-not-at-top

  hf_config = convert.read_hf_config(hf_dir)
  model_config, info = configs.from_hf(hf_config, os.path.join(hf_dir, convert.CONFIG_FILE))
  reader = Reader(hf_dir)
  mesh = mesh if mesh is not None else sharding.make_mesh(MeshConfig().as_dict())
  params = convert.load_params(reader, model_config, info.model_type,
                               abstract_params(model_config, PeftConfig(), mesh))
  return model_config, params, info


def import_hf(hf_dir: str, workdir: str, mesh_config=None, tokenizer_dir: str | None = None
              ) -> dict:
  """Writes the run directory; returns a summary (architecture, parameters, seconds)."""
  import jax  # pylint: disable=g-import-not-at-top

  from infer import run_writer  # pylint: disable=g-import-not-at-top
  from model import sharding, store  # pylint: disable=g-import-not-at-top
  from model.hf import tokenizer as hf_tokenizer  # pylint: disable=g-import-not-at-top
  from model.mesh import MeshConfig  # pylint: disable=g-import-not-at-top
  from model.peft import PeftConfig  # pylint: disable=g-import-not-at-top

  if os.path.exists(workdir):
    raise ValueError(f"--workdir={workdir} already exists; pass a new directory")
  start = time.perf_counter()
  mesh = sharding.make_mesh((mesh_config or MeshConfig()).as_dict())
  model_config, params, info = load_hf(hf_dir, mesh)
  tokenizer = hf_tokenizer.from_hf_dir(tokenizer_dir or hf_dir)
  if tokenizer.vocab_size > model_config.vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's "
                     f"vocab_size is {model_config.vocab_size}; pass the tokenizer that belongs "
                     "to this model")
  sections = {
      "model": dataclasses.asdict(model_config), "peft": dataclasses.asdict(PeftConfig()),
      HF_SECTION: {"model_type": info.model_type, "source": os.path.abspath(hf_dir),
                   "config": info.config}}
  run_writer.write_run_atomically(
      workdir, sections, 0, params,
      lambda tmp: tokenizer.save(os.path.join(tmp, store.TOKENIZER_DIR)), flag="--workdir")
  n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  summary = {"workdir": workdir, "model_type": info.model_type, "params": n_params,
             "tokenizer_vocab": tokenizer.vocab_size,
             "seconds": round(time.perf_counter() - start, 2)}
  logging.info("imported %s (%s, %s parameters) -> %s in %.1fs", hf_dir, info.model_type,
               f"{n_params:,}", workdir, summary["seconds"])
  return summary


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from infer import cli  # pylint: disable=g-import-not-at-top
  from model.mesh import parse_mesh  # pylint: disable=g-import-not-at-top

  def body():
    if not FLAGS.hf_dir or not FLAGS.workdir:
      raise ValueError("give --hf_dir=HF_MODEL_DIR and --workdir=NEW_RUN_DIR")
    print(import_hf(FLAGS.hf_dir, FLAGS.workdir, parse_mesh(FLAGS.mesh), FLAGS.tokenizer_dir))
  cli.run_cli("hf_import", body)


def main():
  define_flags()
  app.run(_main)


if __name__ == "__main__":
  main()
