r"""One-command GPU check: the issue-14 table of training, MoE, decode and attention figures.

  python -m experiments.gpu_check            # on one NVIDIA H100 / H200: about 5-8 minutes
  python -m experiments.gpu_check --dry      # any machine (CPU): tiny shapes, same code paths

Rows (full mode; --dry swaps in tiny presets and shapes, and measures the same things):
  train 125m   batch 16 x 1024, bf16          tokens/s vs nanoGPT 124M on an H100 (471k)
  train 1b     batch 4 x 2048, bf16, remat dots  model TFLOP/s (PaLM 6N + 12LdT) vs
                                              nanoGPT-style 1.3B on an H100 (511 TFLOP/s)
  moe_1b       capacity (cf 1.25) and dropless dispatch: tokens/s, capacity / dropless
  decode 1b    batch 1 and 32, bf16: tokens/s as a fraction of the bandwidth roofline
               (experiments/bench_decode.py, copy bandwidth measured in the same run)
  attention    cuDNN vs XLA causal attention (bf16) against a float32 reference: max error
The peer figures were measured on an H100 with PyTorch nanoGPT; on an H200 (more memory
bandwidth, same bf16 peak) the training ratios compare like for like, decode does not.
Prints one markdown table; the last stdout line is one JSON object with every figure.
Without a GPU and without --dry it refuses (the figures would be meaningless).
"""

import dataclasses
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import bench_decode, bench_train
from infer.decode import Decoder
from model import config as model_config_lib
from model.attention import causal_attention, reference_attention
from train import hardware

_FLAGS = flags.FlagValues()
flags.DEFINE_bool("dry", False, "Tiny shapes through the same code paths (seconds on a CPU).",
                  flag_values=_FLAGS)
flags.DEFINE_integer("steps", 0, "Timed train steps per row; 0: 10 (2 with --dry).",
                     flag_values=_FLAGS)
flags.register_validator("steps", lambda v: v >= 0, message="--steps must be >= 0 (0: default)",
                         flag_values=_FLAGS)

PEER_TOKENS_PER_S_124M = 471e3  # PyTorch nanoGPT, GPT-2 124M shape, one H100
PEER_TFLOPS_1B = 511.0  # PyTorch nanoGPT-style 1.3B, model FLOPs, one H100


@dataclasses.dataclass(frozen=True)
class Plan:
  """Shapes of every row; FULL is the issue's table, DRY the same paths at tiny sizes."""
  dtype: str
  train_small: tuple  # (preset, batch, seq_len, remat)
  train_large: tuple
  moe: tuple  # (preset, batch, seq_len)
  decode: tuple  # (preset, (batch sizes), prompt_len, gen_tokens)
  attention: tuple  # (batch, length, heads, head_dim)
  steps: int
  copy_mbytes: int


FULL = Plan("bfloat16", ("125m", 16, 1024, "none"), ("1b", 4, 2048, "dots"),
            ("moe_1b", 8, 1024), ("1b", (1, 32), 128, 256), (4, 2048, 16, 128), 10, 2048)
DRY = Plan("float32", ("tiny", 2, 32, "none"), ("tiny", 2, 32, "dots"), ("moe_tiny", 2, 32),
           ("tiny", (1, 2), 8, 4), (1, 32, 2, 16), 2, 16)


def attention_numerics(batch: int, length: int, heads: int, head_dim: int,
                       use_cudnn: bool, seed: int = 0) -> dict:
  """Max |error| of XLA (and cuDNN) bf16 causal attention against a float32 reference."""
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(key, (batch, length, heads, head_dim), jnp.float32)
             for key in keys)
  reference = np.asarray(reference_attention(q, k, v), np.float32)
  bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  out = {"xla": np.asarray(jax.jit(lambda *a: causal_attention(*a, "xla"))(*bf), np.float32)}
  if use_cudnn:
    out["cudnn"] = np.asarray(jax.jit(lambda *a: causal_attention(*a, "cudnn"))(*bf),
                              np.float32)
  errors = {f"{name}_max_abs_error": float(np.max(np.abs(o - reference)))
            for name, o in out.items()}
  if use_cudnn:
    errors["cudnn_vs_xla_max_abs_diff"] = float(np.max(np.abs(out["cudnn"] - out["xla"])))
    # Both round inputs to bf16; cuDNN may differ in accumulation order, not by more.
    errors["cudnn_ok"] = errors["cudnn_max_abs_error"] <= max(
        2 * errors["xla_max_abs_error"], 2e-2)
  return errors


def _train_row(plan: Plan, spec: tuple, mesh, peaks: dict, **overrides) -> dict:
  name, batch, seq_len = spec[:3]
  if len(spec) > 3:
    overrides["remat"] = spec[3]
  model = model_config_lib.preset(name, dtype=plan.dtype, **overrides)
  return bench_train.benchmark_train(model, batch, seq_len, plan.steps, mesh, peaks, warmup=2,
                                     name=name)


def run(dry: bool, steps: int = 0) -> dict:
  """Runs every row and prints the table; returns the summary dict."""
  on_gpu = jax.default_backend() == "gpu"
  if not dry and not on_gpu:
    raise ValueError(f"no GPU here (backend {jax.default_backend()!r}): the full check needs "
                     "an NVIDIA H100/H200; pass --dry for the tiny-shape run")
  plan = DRY if dry else FULL
  if steps:
    plan = dataclasses.replace(plan, steps=steps)
  start = time.perf_counter()
  mesh = bench_train.build_mesh({"data": 1})
  peaks = bench_train.measure_peaks(plan.dtype, 256 if dry else 0)
  rows = []

  small = _train_row(plan, plan.train_small, mesh, peaks)
  rows.append(dict(row=f"train {small['preset']} {small['batch_size']}x{small['seq_len']}",
                   figure=small["tokens_per_s"], unit="tokens/s", peer=PEER_TOKENS_PER_S_124M,
                   ratio=small["tokens_per_s"] / PEER_TOKENS_PER_S_124M,
                   note=f"MFU {100 * small['mfu_vs_matmul']['palm']:.1f}% of measured matmul"))
  large = _train_row(plan, plan.train_large, mesh, peaks)
  tflops = large["achieved_tflops"]["palm"]
  rows.append(dict(row=f"train {large['preset']} {large['batch_size']}x{large['seq_len']} "
                       f"remat {large['remat']}", figure=tflops, unit="model TFLOP/s",
                   peer=PEER_TFLOPS_1B, ratio=tflops / PEER_TFLOPS_1B,
                   note=f"{large['tokens_per_s']:,.0f} tokens/s"))
  moe_name, moe_batch, moe_len = plan.moe
  moe_cf = _train_row(plan, plan.moe, mesh, peaks, capacity_factor=1.25)
  moe_dl = _train_row(plan, plan.moe, mesh, peaks, capacity_factor=0.0)
  for result in (moe_cf, moe_dl):
    rows.append(dict(row=f"train {moe_name} {moe_batch}x{moe_len} {result['dispatch']}",
                     figure=result["tokens_per_s"], unit="tokens/s", peer=None,
                     ratio=result["tokens_per_s"] / moe_dl["tokens_per_s"],
                     note=f"vs dropless; drops {100 * result['moe_drop_fraction']:.2f}%"))

  name, batches, prompt_len, gen_tokens = plan.decode
  _, config, params = bench_decode.load_params(name, "", plan.dtype, 0)
  decoder = Decoder(config, mesh)
  bandwidth = hardware.measure_inplace_copy_bandwidth(plan.copy_mbytes << 20)
  for batch in batches:
    r = bench_decode.benchmark_decode(decoder, params, batch, prompt_len, gen_tokens, bandwidth,
                                      warmup=2, repeats=1 if dry else 3)
    rows.append(dict(row=f"decode {name} batch {batch}", figure=r["tokens_per_s"],
                     unit="tokens/s", peer=r["roofline_tokens_per_s"],
                     ratio=r["roofline_fraction"],
                     note=f"bandwidth roofline ({bandwidth / 1e9:.0f} GB/s copy)"))
  del params, decoder

  numerics = attention_numerics(*plan.attention, use_cudnn=on_gpu)
  rows.append(dict(row="attention cuDNN vs XLA (bf16)",
                   figure=numerics.get("cudnn_max_abs_error", numerics["xla_max_abs_error"]),
                   unit="max abs error vs f32", peer=numerics["xla_max_abs_error"],
                   ratio=(numerics["cudnn_max_abs_error"] / numerics["xla_max_abs_error"]
                          if on_gpu else None),
                   note=("ok" if numerics.get("cudnn_ok") else "CHECK") if on_gpu
                   else "no GPU: XLA only"))
  summary = dict(benchmark="gpu_check", dry=dry, **bench_train.device_info(), **peaks,
                 seconds=time.perf_counter() - start, rows=rows, attention=numerics,
                 train=[small, large, moe_cf, moe_dl])
  print(format_table(rows), flush=True)
  bench_train.print_summary(summary)
  return summary


def format_table(rows: Sequence[dict]) -> str:
  def num(x):
    if x is None:
      return "-"
    return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
  lines = ["| check | figure | unit | peer / ceiling | ratio | note |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['row']} | {num(r['figure'])} | {r['unit']} | {num(r['peer'])} | "
                 f"{num(r['ratio'])} | {r['note']} |")
  return "\n".join(lines)


def _run_from_flags() -> dict:
  return run(_FLAGS.dry, _FLAGS.steps)


def main(argv: Sequence[str]) -> dict:
  """Parses argv (program name first) into this module's flags and runs; returns the summary."""
  return bench_train.parse_flags_and_run(_FLAGS, _run_from_flags, argv)


if __name__ == "__main__":
  bench_train.run_cli(_FLAGS, _run_from_flags, __doc__)
