r"""Exports a run directory as a Hugging Face model directory that transformers loads.

  python -m infer.hf_export --workdir=runs/llama_sft --merge_lora --out=/path/to/hf_out

Writes config.json, generation_config.json, model.safetensors (or shards of at most
--max_shard_mb with model.safetensors.index.json; --dtype float32 or bfloat16) and the
tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json) for
`AutoModelForCausalLM.from_pretrained(out)` / `AutoTokenizer.from_pretrained(out)`.
The architecture is the one the run was imported from, else inferred from the model
config (--model_type overrides). LoRA runs need --merge_lora; int8 / int4 runs and QAT
runs are written as the float weights the model computes with (dequantized). A config
option with no equivalent in the architecture (post-norm, sinusoidal positions, MoE
capacity, shared experts, ...) is refused with its name.
"""

import json
import os
import shutil
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the CLI flags (at run time, so tests can import the library functions of
  both hf_import and hf_export in one process)."""
  flags.DEFINE_string("workdir", None, "Run directory to export (latest checkpoint).")
  flags.DEFINE_string("checkpoint", None, "A specific checkpoint: DIR/checkpoints/STEP.")
  flags.DEFINE_string("out", None, "Hugging Face model directory to write (must not exist).")
  flags.DEFINE_bool("merge_lora", False, "Fold LoRA factors into the kernels before export.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of the saved weights.")
  flags.DEFINE_integer("max_shard_mb", 5000, "Largest safetensors shard, in MB.")
  flags.DEFINE_enum("model_type", None, ["llama", "mistral", "qwen2", "mixtral", "gpt2"],
                    "HF architecture to write (default: the imported one, else inferred).")


def float_params(loaded, merge_lora: bool):
  """The float weights the loaded model computes with: LoRA merged, quantization undone."""
  from infer.loading import abstract_params  # pylint: disable=g-import-not-at-top
  from model import peft as peft_lib  # pylint: disable=g-import-not-at-top
  from model import quant as quant_lib  # pylint: disable=g-import-not-at-top
  from model.peft import PeftConfig  # pylint: disable=g-import-not-at-top

  params, peft, quant = loaded.params, loaded.peft, loaded.quant
  if peft.method == "lora" and not merge_lora:
    raise ValueError(f"{loaded.workdir} is a LoRA run; pass --merge_lora to fold the factors "
                     "into the weights (Hugging Face models have no LoRA leaves)")
  if peft.method not in ("full", "lora"):
    raise ValueError(f"{loaded.workdir} is a peft.method={peft.method!r} run, which has no "
                     "plain-weight equivalent in Hugging Face formats")
  if merge_lora and peft.method != "lora":
    raise ValueError(f"--merge_lora needs a LoRA run, but {loaded.workdir} is "
                     f"peft.method={peft.method!r}; drop --merge_lora")
  if getattr(quant, "include_embed", False) and (quant.stored or quant.qat != "none"):
    raise ValueError(f"{loaded.workdir} has a quantized embedding table (quant.include_embed);"
                     " export the float run it was quantized from instead")
  float_shapes = quant_lib.kernel_shapes(abstract_params(loaded.model_config, peft,
                                                         loaded.mesh))
  if quant.stored:
    params = quant_lib.dequantize_params(params, float_shapes)
  if peft.method == "lora":
    params = peft_lib.merge_lora(params, peft, loaded.model_config)
  if quant.qat != "none":  # the forward uses fake-quantized kernels: export those
    q = quant_lib.QuantConfig(scheme=quant.qat, group_size=quant.group_size,
                              symmetric=quant.symmetric, include_head=quant.include_head)
    stored = quant_lib.quantize_params(
        params, abstract_params(loaded.model_config, PeftConfig(), loaded.mesh, q), q)
    params = quant_lib.dequantize_params(stored, float_shapes)
  return params


def export_hf(path: str, out: str, merge_lora: bool = False, dtype: str = "float32",
              max_shard_mb: int = 5000, model_type: str | None = None) -> dict:
  """Writes the HF directory; returns a summary (architecture, files, seconds)."""
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  from model import store  # pylint: disable=g-import-not-at-top
  from model.hf import configs, convert, safetensors_io  # pylint: disable=g-import-not-at-top
  from model.hf import tokenizer as hf_tokenizer  # pylint: disable=g-import-not-at-top

  if os.path.exists(out):
    raise ValueError(f"--out={out} already exists; pass a new directory")
  start = time.perf_counter()
  loaded = load_model(path)
  run = store.read_run_config(loaded.workdir)
  source = run.sections.get("hf", {}).get("model_type")
  model_type = model_type or source or configs.infer_model_type(loaded.model_config)
  configs.check_exportable(loaded.model_config, model_type)
  params = float_params(loaded, merge_lora)
  tok = loaded.tokenizer
  ids = {f"{name}_token_id": getattr(tok, f"{name}_id") for name in ("bos", "eos", "pad")}
  ids = {k: v for k, v in ids.items() if v is not None and v >= 0}
  hf_config = configs.to_hf(loaded.model_config, model_type, ids)

  tmp = out.rstrip("/") + f".tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    os.makedirs(tmp)
    files = safetensors_io.write(tmp, convert.export_tensors(params, loaded.model_config,
                                                             model_type),
                                 dtype, max_shard_bytes=max_shard_mb * 2**20)
    hf_config["dtype"] = dtype
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
      json.dump(ids, f, indent=2)
    if isinstance(tok, hf_tokenizer.HfTokenizer):
      files += tok.export_files(tmp)
    else:
      files += hf_tokenizer.export_project_tokenizer(tok, tmp)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  summary = {"out": out, "model_type": model_type, "step": loaded.step, "dtype": dtype,
             "files": files, "seconds": round(time.perf_counter() - start, 2)}
  logging.info("exported %s step %d as Hugging Face %s -> %s in %.1fs", loaded.workdir,
               loaded.step, model_type, out, summary["seconds"])
  return summary


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from infer import cli  # pylint: disable=g-import-not-at-top

  def body():
    path = cli.source_run(FLAGS.checkpoint, FLAGS.workdir, FLAGS.out, "NEW_HF_DIR")
    print(export_hf(path, FLAGS.out, FLAGS.merge_lora, FLAGS.dtype, FLAGS.max_shard_mb,
                    FLAGS.model_type))
  cli.run_cli("hf_export", body)


def main():
  define_flags()
  app.run(_main)


if __name__ == "__main__":
  main()
