r"""Hugging Face conversion figures: logit parity per architecture, and time / peak host
memory of importing and exporting a larger randomly initialised Llama.

  python -m experiments.bench_hf_convert --out=/tmp/hf_bench            # both parts
  python -m experiments.bench_hf_convert --out=/tmp/hf_bench --skip_large
  python -m experiments.bench_hf_convert --out=/tmp/hf_bench_1b --skip_parity --d_model=2048

Parity: for each architecture a tiny random transformers model is saved, imported with
infer.hf_import and compared (float32 logits, max |diff| over a ragged batch). Large: a
Llama of --d_model / --n_layers (default ~250M parameters) is saved by transformers in
bfloat16 shards, then `python -m infer.hf_import` and `python -m infer.hf_export` run as
child processes that report their own peak RSS (ru_maxrss), next to the model's float32
size.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "/tmp/hf_bench", "Scratch directory (created; must be empty).")
flags.DEFINE_bool("skip_large", False, "Only the per-architecture parity table.")
flags.DEFINE_bool("skip_parity", False, "Only the large-model conversion.")
flags.DEFINE_integer("d_model", 1024, "Large model width.")
flags.DEFINE_integer("n_layers", 16, "Large model depth.")
flags.DEFINE_integer("vocab", 32000, "Large model vocabulary.")

ARCHS = ("llama", "mistral", "qwen2", "mixtral", "gpt2")


def _tiny(model_type: str):
  import transformers  # pylint: disable=g-import-not-at-top
  common = dict(vocab_size=320, initializer_range=0.15)
  llama = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               **common)
  return {
      "llama": lambda: transformers.LlamaConfig(**llama, rope_parameters={
          "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}),
      "mistral": lambda: transformers.MistralConfig(**llama, sliding_window=None),
      "qwen2": lambda: transformers.Qwen2Config(**llama),
      "mixtral": lambda: transformers.MixtralConfig(**llama, num_local_experts=4),
      "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                              **common),
  }[model_type]()


def _tokenizer(directory: str) -> None:
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(["hello world, def f(x): return x + 1"] * 10, trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<s>", "</s>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>"}, f)


def parity(root: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from infer.hf_import import import_hf  # pylint: disable=g-import-not-at-top
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  from model.transformer import Transformer  # pylint: disable=g-import-not-at-top
  rows = {}
  rng = np.random.default_rng(0)
  lengths = [17, 9, 30, 3]
  for arch in ARCHS:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_tiny(arch)).float().eval()
    hf_dir, run = os.path.join(root, arch), os.path.join(root, arch + "_run")
    model.save_pretrained(hf_dir)
    _tokenizer(hf_dir)
    import_hf(hf_dir, run)
    loaded = load_model(run)
    ids = rng.integers(3, 300, (len(lengths), max(lengths))).astype(np.int32)
    ours = np.asarray(Transformer(loaded.model_config).apply({"params": loaded.params},
                                                             ids)[0])
    diff = 0.0
    with torch.no_grad():
      for i, n in enumerate(lengths):
        ref = model(torch.tensor(ids[i:i + 1, :n], dtype=torch.long)).logits[0].numpy()
        diff = max(diff, float(np.abs(ours[i, :n] - ref).max()))
    rows[arch] = {"max_abs_logit_diff": diff, "max_abs_logit": float(np.abs(ours).max())}
    print(json.dumps({arch: rows[arch]}), flush=True)
    jax.clear_caches()
  return rows


_WRAPPER = (
    "import atexit, resource, runpy, sys\n"
    "atexit.register(lambda: print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF)"
    ".ru_maxrss, file=sys.stderr))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")


def _child(args) -> tuple[float, float]:
  """(seconds, peak RSS GB) of `python -m args` in a child process that reports its own
  ru_maxrss at exit."""
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-c", _WRAPPER, *args], capture_output=True,
                        text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  seconds = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"{args[0]} failed:\n{proc.stderr[-3000:]}")
  print(proc.stdout.strip(), flush=True)
  peak_kb = [int(line.split()[1]) for line in proc.stderr.splitlines()
             if line.startswith("PEAK_RSS_KB")][-1]
  return seconds, peak_kb / 2**20


def large(root: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  d = FLAGS.d_model
  config = transformers.LlamaConfig(
      vocab_size=FLAGS.vocab, hidden_size=d, intermediate_size=int(d * 2.75) // 64 * 64,
      num_hidden_layers=FLAGS.n_layers, num_attention_heads=d // 64,
      num_key_value_heads=d // 128, max_position_embeddings=2048)
  start = time.perf_counter()
  torch.manual_seed(0)
  with torch.device("cpu"):
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
  hf_dir = os.path.join(root, "large_hf")
  model.save_pretrained(hf_dir, max_shard_size="200MB")
  n_params = sum(p.numel() for p in model.parameters())
  del model
  _tokenizer(hf_dir)
  build_s = time.perf_counter() - start
  print(f"built and saved a {n_params / 1e6:.0f}M-parameter Llama (bf16 shards) in "
        f"{build_s:.0f}s", flush=True)
  run, out = os.path.join(root, "large_run"), os.path.join(root, "large_export")
  import_s, import_gb = _child(["infer.hf_import", f"--hf_dir={hf_dir}", f"--workdir={run}"])
  export_s, export_gb = _child(["infer.hf_export", f"--workdir={run}", f"--out={out}",
                                "--dtype=bfloat16", "--max_shard_mb=500"])
  return {"params": n_params, "float32_gb": n_params * 4 / 2**30,
          "import_seconds": import_s, "import_peak_rss_gb": import_gb,
          "export_seconds": export_s, "export_peak_rss_gb": export_gb}


def _main(argv):
  del argv
  os.makedirs(FLAGS.out, exist_ok=False)
  from infer import cli  # pylint: disable=g-import-not-at-top
  cli.quiet_library_logs()
  result = {} if FLAGS.skip_parity else {"parity": parity(FLAGS.out)}
  if not FLAGS.skip_large:
    result["large"] = large(FLAGS.out)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(_main)
