r"""Greedy decode throughput against the memory-bandwidth roofline, on one device.

  python -m experiments.bench_decode --preset=125m --batch_sizes=1,16 --prompt_len=128 \
      --gen_tokens=256 [--dtype=bfloat16] [--workdir=RUN_DIR]

Parameters are random (or the latest checkpoint of --workdir) and are cast once to the
compute dtype, as a serving setup would. For each batch size B it prefills B random prompts
of --prompt_len tokens and times decoding two ways in the same run:
  device loop: `Decoder.generate` (greedy, no eos), whose sampling loop runs on the device
    in chunks of `steps_per_dispatch` tokens; decode tokens/s = B * decode_steps /
    decode_seconds as `Generation` reports them (after an untimed call that compiles);
  stepwise: one `Decoder.decode_step` dispatch per token (greedy sampling included, no host
    sync per step), --warmup untimed steps (the first compiles) then --gen_tokens timed.
The two are timed alternately --repeats times and the medians reported (a busy machine
slows both alike).

Roofline: a decode step must read every weight once plus the KV cache, so
  bytes/step = parameter bytes read + KV cache bytes read
  roofline tokens/s = B * copy bandwidth / bytes/step,
where the copy bandwidth ((read + write) bytes / s of a large array copy into its own donated
buffer) is measured in the same run on the same device (train.hardware.
measure_inplace_copy_bandwidth; hardware.measure_copy_bandwidth, which allocates a fresh
output and on CPU mostly measures page faults, is reported alongside). Parameter bytes are all
parameters in the compute dtype except the input token table (untied) and learned position
table, of which only B rows are read; MoE presets count all experts (the XLA dispatch
multiplies every expert's buffer). KV cache bytes are the FULL cache capacity
(2 * n_layers * B * capacity * kv_heads * head_dim * itemsize), not the filled prefix: the
XLA attention path reads and masks the whole cache every step. Capacity is the decoder's
power-of-two bucket of prompt + warmup + gen_tokens (at most max_len). The last stdout line
is one JSON object with every figure.
Compute ceiling: measured matmul FLOP/s / forward FLOPs per token (model/flops.py), with
the matmul (hardware.measure_matmul_flops, 1024^3 on CPU) timed in the same run; on a CPU,
batch > 1 decode is bound by it rather than by bandwidth, so its fraction is reported too.
"""

import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import bench_train
from infer import sampling
from infer.decode import Decoder
from infer.loading import load_model
from model import config as model_config_lib
from model import flops
from model.config import ModelConfig, compute_dtype
from model.transformer import Transformer
from train import hardware

_FLAGS = flags.FlagValues()
flags.DEFINE_string("preset", "", "Model preset (model/config.py PRESETS); default: small on "
                    "CPU, 125m on accelerators. Ignored with --workdir.", flag_values=_FLAGS)
flags.DEFINE_string("workdir", "", "Run directory whose latest checkpoint to load instead of "
                    "random parameters.", flag_values=_FLAGS)
flags.DEFINE_string("batch_sizes", "", "Comma-separated batch sizes; default '1,8'.",
                    flag_values=_FLAGS)
flags.DEFINE_integer("prompt_len", 0, "Prompt tokens P; 0: 32 on CPU, 128 otherwise.",
                     flag_values=_FLAGS)
flags.DEFINE_integer("gen_tokens", 0, "Timed decode steps T; 0: 32 on CPU, 256 otherwise.",
                     flag_values=_FLAGS)
flags.DEFINE_integer("warmup", 2, "Untimed decode steps first (the first compiles).",
                     flag_values=_FLAGS)
flags.DEFINE_enum("dtype", "", ["", *model_config_lib.DTYPES],
                  "Compute dtype; default float32 on CPU, bfloat16 otherwise.", flag_values=_FLAGS)
flags.DEFINE_integer("copy_mbytes", 0, "Size of the bandwidth-reference copy in MiB; 0: 256 on "
                     "CPU, 2048 otherwise.", flag_values=_FLAGS)
flags.DEFINE_integer("seed", 0, "Parameter and prompt seed.", flag_values=_FLAGS)
flags.DEFINE_integer("repeats", 3, "Timed runs of each decode path, interleaved; medians are "
                     "reported.", flag_values=_FLAGS)
for _name in ('prompt_len', 'gen_tokens', 'copy_mbytes'):  # 0 means the device's default; negative is an error, not a default
  flags.register_validator(_name, lambda v: v >= 0, message=f"--{_name} must be >= 0 (0: default)",
                           flag_values=_FLAGS)
flags.register_validator("repeats", lambda v: v >= 1, message="--repeats must be >= 1",
                         flag_values=_FLAGS)
flags.register_validator("warmup", lambda v: v >= 1,
                         message="--warmup must be >= 1 (the first step compiles)",
                         flag_values=_FLAGS)

_CPU_DEFAULTS = dict(preset="small", prompt_len=32, gen_tokens=32)
_ACCELERATOR_DEFAULTS = dict(preset="125m", prompt_len=128, gen_tokens=256)


def param_bytes_read(params, config: ModelConfig, batch: int) -> int:
  """Bytes of `params` one decode step reads (tables read by row count only B rows)."""
  row_tables = [("pos_embed", "embedding")] if config.pos_encoding == "learned" else []
  if not config.tie_embeddings:
    row_tables.append(("embed", "embedding"))
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  for module, name in row_tables:
    table = params[module][name]
    total -= (table.shape[0] - min(batch, table.shape[0])) * table.shape[1] * table.dtype.itemsize
  return int(total)


def kv_cache_bytes(cache: dict) -> int:
  """Bytes of the k and v buffers at full capacity (what the XLA attention reads)."""
  return int(sum(cache[name].size * cache[name].dtype.itemsize for name in ("k", "v")))


def _stepwise_seconds(decoder: Decoder, params, prompts, gen_tokens: int, warmup: int,
                      greedy, key) -> tuple[float, float, dict]:
  """(seconds for gen_tokens decode_step dispatches, first-step seconds, prefill cache)."""
  logits_BV, cache = decoder.prefill(params, prompts, warmup + gen_tokens)
  tokens_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  jax.block_until_ready(cache)
  start = time.perf_counter()
  tokens_B, _, cache = decoder.decode_step(params, cache, tokens_B, key, greedy)
  jax.block_until_ready(tokens_B)
  first_seconds = time.perf_counter() - start
  for _ in range(warmup - 1):
    tokens_B, _, cache = decoder.decode_step(params, cache, tokens_B, key, greedy)
  jax.block_until_ready(tokens_B)
  start = time.perf_counter()
  for _ in range(gen_tokens):
    tokens_B, _, cache = decoder.decode_step(params, cache, tokens_B, key, greedy)
  jax.block_until_ready((tokens_B, cache))
  return time.perf_counter() - start, first_seconds, cache


def benchmark_decode(decoder: Decoder, params, batch: int, prompt_len: int, gen_tokens: int,
                     bandwidth: float, warmup: int = 2, seed: int = 0, repeats: int = 3,
                     matmul_flops: float | None = None) -> dict:
  """Times `gen_tokens` greedy decode steps for `batch` rows, device loop and stepwise
  interleaved `repeats` times (medians), after untimed compiling runs of both."""
  config = decoder.config
  if warmup < 1 or gen_tokens < 1 or repeats < 1:
    raise ValueError(f"--warmup ({warmup}), --gen_tokens ({gen_tokens}) and --repeats "
                     f"({repeats}) must be >= 1")
  if prompt_len + warmup + gen_tokens > config.max_len:
    raise ValueError(f"prompt_len + warmup + gen_tokens = {prompt_len + warmup + gen_tokens} "
                     f"exceeds the model's max_len={config.max_len}; lower --prompt_len or "
                     "--gen_tokens")
  rng = np.random.default_rng([seed, batch])
  prompts = rng.integers(0, config.vocab_size, size=(batch, prompt_len)).tolist()
  greedy = sampling.make_sampling_params(batch, "greedy")
  key = jax.random.key(seed)

  decoder.prefill(params, prompts, warmup + gen_tokens)  # compiles prefill
  start = time.perf_counter()
  logits_BV, cache = decoder.prefill(params, prompts, warmup + gen_tokens)
  jax.block_until_ready(logits_BV)
  prefill_seconds = time.perf_counter() - start
  capacity = int(cache["k"].shape[3])
  cache_bytes = kv_cache_bytes(cache)
  del cache
  _, compile_seconds, _ = _stepwise_seconds(decoder, params, prompts, 1, warmup, greedy, key)
  # Device loop: gen_tokens + 1 new tokens = gen_tokens decode steps after the prefill.
  start = time.perf_counter()
  decoder.generate(params, prompts, gen_tokens + 1, greedy, seed=seed)  # compiles
  loop_compile_seconds = time.perf_counter() - start
  loop_seconds, stepwise_seconds = [], []
  for _ in range(repeats):
    out = decoder.generate(params, prompts, gen_tokens + 1, greedy, seed=seed)
    if out.decode_steps != gen_tokens:
      raise RuntimeError(f"device loop ran {out.decode_steps} steps, expected {gen_tokens}")
    loop_seconds.append(out.decode_seconds)
    stepwise_seconds.append(
        _stepwise_seconds(decoder, params, prompts, gen_tokens, warmup, greedy, key)[0])
  elapsed, stepwise_elapsed = float(np.median(loop_seconds)), float(np.median(stepwise_seconds))
  loop_capacity = decoder._pad_prompts(  # pylint: disable=protected-access
      prompts, gen_tokens + 1)[2]
  loop_cache_bytes = cache_bytes * loop_capacity // capacity

  weights = param_bytes_read(params, config, batch)
  step_bytes = weights + loop_cache_bytes
  tokens_per_s = batch * gen_tokens / elapsed
  stepwise_tokens_per_s = batch * gen_tokens / stepwise_elapsed
  roofline = batch * bandwidth / step_bytes
  stepwise_roofline = batch * bandwidth / (weights + cache_bytes)
  return dict(
      batch_size=batch, prompt_len=prompt_len, gen_tokens=gen_tokens, repeats=repeats,
      cache_capacity=loop_capacity, prefill_seconds=prefill_seconds,
      prefill_tokens_per_s=batch * prompt_len / prefill_seconds,
      decode_compile_seconds=loop_compile_seconds, step_seconds=elapsed / gen_tokens,
      tokens_per_s=tokens_per_s, param_bytes_read=weights, kv_cache_bytes_read=loop_cache_bytes,
      bytes_per_step=step_bytes, achieved_gb_per_s=step_bytes * gen_tokens / elapsed / 1e9,
      roofline_tokens_per_s=roofline, roofline_fraction=tokens_per_s / roofline,
      steps_per_dispatch=decoder.steps_per_dispatch, unroll_layers=decoder.unroll_layers,
      stepwise_cache_capacity=capacity, stepwise_compile_seconds=compile_seconds,
      stepwise_step_seconds=stepwise_elapsed / gen_tokens,
      stepwise_tokens_per_s=stepwise_tokens_per_s,
      stepwise_roofline_fraction=stepwise_tokens_per_s / stepwise_roofline,
      device_loop_over_stepwise=tokens_per_s / stepwise_tokens_per_s,
      decode_flops_per_token=flops.forward_flops_per_token(config, loop_capacity),
      **_compute_ceiling(tokens_per_s, flops.forward_flops_per_token(config, loop_capacity),
                         matmul_flops))


def _compute_ceiling(tokens_per_s: float, flops_per_token: float,
                     matmul_flops: float | None) -> dict:
  """Tokens/s a device running every FLOP at the matmul rate would reach (any batch)."""
  if not matmul_flops:
    return {}
  ceiling = matmul_flops / flops_per_token
  return dict(compute_ceiling_tokens_per_s=ceiling,
              compute_ceiling_fraction=tokens_per_s / ceiling)


def describe(name: str, config: ModelConfig, r: dict) -> str:
  return (
      f"{name} {config.dtype} batch {r['batch_size']}, prompt {r['prompt_len']}, "
      f"{r['gen_tokens']} new tokens (cache capacity {r['cache_capacity']}):\n"
      f"  decode {r['tokens_per_s']:,.1f} tokens/s ({1e3 * r['step_seconds']:.2f} ms/step, "
      f"compile {r['decode_compile_seconds']:.1f} s); prefill {r['prefill_tokens_per_s']:,.0f} "
      f"tokens/s\n"
      f"  bytes/step {r['bytes_per_step'] / 1e6:.2f} MB (params {r['param_bytes_read'] / 1e6:.2f}"
      f" + KV cache {r['kv_cache_bytes_read'] / 1e6:.2f}) -> roofline "
      f"{r['roofline_tokens_per_s']:,.0f} tokens/s; achieved {100 * r['roofline_fraction']:.1f}%"
      f" ({r['achieved_gb_per_s']:.2f} GB/s) with the device loop\n"
      f"  stepwise (one dispatch per token): {r['stepwise_tokens_per_s']:,.1f} tokens/s = "
      f"{100 * r['stepwise_roofline_fraction']:.1f}% of roofline; device loop / stepwise "
      f"{r['device_loop_over_stepwise']:.2f}x"
      + (f"\n  compute ceiling {r['compute_ceiling_tokens_per_s']:,.0f} tokens/s (matmul rate / "
         f"FLOPs per token); achieved {100 * r['compute_ceiling_fraction']:.1f}%"
         if "compute_ceiling_fraction" in r else ""))


def load_params(preset: str, workdir: str, dtype: str, seed: int):
  """(name, config, params on one device in the compute dtype) from a preset or a run dir."""
  device = jax.local_devices()[0]
  if workdir:
    loaded = load_model(workdir, dtype=dtype)
    name, config, params = workdir, loaded.model_config, loaded.params
  else:
    name, config = preset, model_config_lib.preset(preset, dtype=dtype)
    init = lambda key: nn.unbox(Transformer(config).init(key, jnp.zeros((1, 8), jnp.int32)))
    with jax.default_device(device):
      params = jax.jit(init)(jax.random.key(seed))["params"]
  cast = compute_dtype(config)
  params = jax.device_put(jax.tree.map(lambda x: x.astype(cast), params), device)
  return name, config, params


def run(preset: str, batch_sizes: Sequence[int], prompt_len: int, gen_tokens: int,
        warmup: int = 2, dtype: str = "", workdir: str = "", copy_mbytes: int = 0,
        seed: int = 0, repeats: int = 3) -> dict:
  """Benchmarks each batch size; prints a readable block per run and returns the summary."""
  dtype = dtype or bench_train.default_dtype()
  name, config, params = load_params(preset, workdir, dtype, seed)
  mesh = bench_train.build_mesh({"data": 1})
  decoder = Decoder(config, mesh)
  n_bytes = (copy_mbytes or (256 if bench_train.on_cpu() else 2048)) << 20
  bandwidth = hardware.measure_inplace_copy_bandwidth(n_bytes)
  fresh_bandwidth = hardware.measure_copy_bandwidth(n_bytes)
  matmul_flops = hardware.measure_matmul_flops()
  print(f"reference copy of {n_bytes >> 20} MiB: {bandwidth / 1e9:.3g} GB/s in place (the "
        f"roofline's), {fresh_bandwidth / 1e9:.3g} GB/s into a fresh buffer", flush=True)
  counts = flops.param_counts(config)
  results = []
  for batch in batch_sizes:
    result = benchmark_decode(decoder, params, batch, prompt_len, gen_tokens, bandwidth, warmup,
                              seed, repeats, matmul_flops)
    print(describe(name, config, result), flush=True)
    results.append(result)
  summary = dict(benchmark="decode", **bench_train.device_info(), model=name,
                 dtype=config.dtype, params=counts["total"], params_active=counts["active"],
                 copy_bytes=n_bytes, copy_bandwidth_gb_per_s=bandwidth / 1e9,
                 copy_bandwidth_fresh_output_gb_per_s=fresh_bandwidth / 1e9,
                 matmul_gflops=matmul_flops / 1e9,
                 kv_cache_read="full capacity", results=results)
  bench_train.print_summary(summary)
  return summary


def _run_from_flags() -> dict:
  defaults = _CPU_DEFAULTS if bench_train.on_cpu() else _ACCELERATOR_DEFAULTS
  f = _FLAGS
  try:
    batch_sizes = [int(b) for b in (f.batch_sizes or "1,8").split(",") if b.strip()]
  except ValueError:
    raise ValueError(f"--batch_sizes={f.batch_sizes!r} must be comma-separated integers") from None
  if not batch_sizes or min(batch_sizes) < 1:
    raise ValueError(f"--batch_sizes={f.batch_sizes!r} must list positive integers")
  return run(f.preset or defaults["preset"], batch_sizes,
             prompt_len=f.prompt_len or defaults["prompt_len"],
             gen_tokens=f.gen_tokens or defaults["gen_tokens"], warmup=f.warmup, dtype=f.dtype,
             workdir=f.workdir, copy_mbytes=f.copy_mbytes, seed=f.seed, repeats=f.repeats)


def main(argv: Sequence[str]) -> dict:
  """Parses argv (program name first) into this module's flags and runs; returns the summary."""
  return bench_train.parse_flags_and_run(_FLAGS, _run_from_flags, argv)


if __name__ == "__main__":
  bench_train.run_cli(_FLAGS, _run_from_flags, __doc__)
