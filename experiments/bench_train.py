r"""Training throughput and MFU of a model preset on the current backend (random tokens).

  python -m experiments.bench_train --preset=125m --batch_size=16 --seq_len=1024 --steps=20 \
      [--dtype=bfloat16] [--remat=none|dots|full] [--mesh=data=-1] [--capacity_factor=1.25] \
      [--attention_impl=auto|xla|cudnn] [--compare_dispatch]
  python -m experiments.bench_train --preset=tiny,small      # CPU defaults, about a minute

For each preset it builds a Trainer on the mesh, runs `--warmup` steps (the first one
compiles), then times `--steps` train steps on one fixed random batch (data loading is not
timed) and reports tokens/s, step time, the three FLOP counts of model/flops.py (exact =
Chinchilla appendix F, 6N, PaLM 6N + 12LdT; all on active, non-embedding parameters for 6N
and PaLM) and MFU against two peaks: an n^3 matmul measured in this run on one device in the
compute dtype (times the mesh size), and the bf16 datasheet peak where known. MoE presets
count active-parameter FLOPs (experts_per_token experts per token), so capacity buffers and
padded dropless dispatch show up as lower MFU. `--compare_dispatch` runs an MoE preset
twice, dropless (capacity_factor=0) and capacity (--capacity_factor, else the preset's, else
1.25), and reports the speed ratio. The last stdout line is one JSON object with every figure.
"""

import dataclasses
import json
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from model import config as model_config_lib
from model import flops, moe, sharding
from model.attention import attention_impl
from model.config import ModelConfig
from train import hardware
from train.config import Config, DataConfig, MeshConfig, TrainConfig
from train.step import Trainer

# Private flag registry: importing this module (e.g. from tests) defines no global flags.
_FLAGS = flags.FlagValues()
flags.DEFINE_string("preset", "", "Comma-separated model presets (model/config.py PRESETS); "
                    "default: small on CPU, 125m on accelerators.", flag_values=_FLAGS)
flags.DEFINE_integer("batch_size", 0, "Global batch in sequences; 0: 8 on CPU, 16 otherwise.",
                     flag_values=_FLAGS)
flags.DEFINE_integer("seq_len", 0, "Sequence length; 0: 128 on CPU, 1024 otherwise (at most "
                     "the preset's max_len).", flag_values=_FLAGS)
flags.DEFINE_integer("steps", 0, "Timed steps; 0: 5 on CPU, 20 otherwise.", flag_values=_FLAGS)
flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first compiles).", flag_values=_FLAGS)
flags.DEFINE_enum("dtype", "", ["", *model_config_lib.DTYPES],
                  "Compute dtype; default float32 on CPU, bfloat16 otherwise.", flag_values=_FLAGS)
flags.DEFINE_enum("remat", "", ["", *model_config_lib.REMAT_POLICIES],
                  "Remat policy; default: the preset's.", flag_values=_FLAGS)
flags.DEFINE_enum("attention_impl", "", ["", *model_config_lib.ATTENTION_IMPLS],
                  "Attention implementation; default: the preset's (auto).", flag_values=_FLAGS)
flags.DEFINE_float("capacity_factor", None, "MoE capacity factor (<= 0: dropless); default: "
                   "the preset's.", flag_values=_FLAGS)
flags.DEFINE_bool("compare_dispatch", False, "MoE presets: time dropless and capacity dispatch.",
                  flag_values=_FLAGS)
flags.DEFINE_string("mesh", "data=-1", "Mesh sizes, e.g. 'data=-1' or 'data=2,fsdp=4'; "
                    "without a -1 the first prod(sizes) devices are used.", flag_values=_FLAGS)
flags.DEFINE_integer("matmul_size", 0, "n of the n^3 reference matmul; 0: 1024 on CPU, 8192 "
                     "otherwise.", flag_values=_FLAGS)
flags.DEFINE_integer("seed", 0, "Parameter and token seed.", flag_values=_FLAGS)
for _name in ('batch_size', 'seq_len', 'steps', 'matmul_size'):  # 0 means the device's default; negative is an error, not a default
  flags.register_validator(_name, lambda v: v >= 0, message=f"--{_name} must be >= 0 (0: default)",
                           flag_values=_FLAGS)
flags.register_validator("warmup", lambda v: v >= 1,
                         message="--warmup must be >= 1 (the first step compiles)",
                         flag_values=_FLAGS)

_CPU_DEFAULTS = dict(preset="small", batch_size=8, seq_len=128, steps=5)
_ACCELERATOR_DEFAULTS = dict(preset="125m", batch_size=16, seq_len=1024, steps=20)
_DEFAULT_CAPACITY_FACTOR = 1.25
_JNP_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# -- helpers shared with bench_decode ---------------------------------------------------------

def on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def default_dtype() -> str:
  return "float32" if on_cpu() else "bfloat16"


def parse_mesh(spec: str) -> dict:
  """'data=-1,fsdp=2' -> {'data': -1, 'fsdp': 2}; unnamed axes are 1."""
  shape = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    axis, eq, size = part.partition("=")
    if not eq or axis not in sharding.MESH_AXES:
      raise ValueError(f"bad --mesh entry {part!r}: use AXIS=SIZE with AXIS one of "
                       f"{sharding.MESH_AXES}, e.g. --mesh=data=-1 or --mesh=data=2,tensor=4")
    try:
      shape[axis] = int(size)
    except ValueError:
      raise ValueError(f"bad --mesh size in {part!r}: expected an integer") from None
  return shape


def build_mesh(shape: dict) -> jax.sharding.Mesh:
  """All devices if an axis is -1, else the first prod(sizes) devices."""
  if -1 in shape.values():
    return sharding.make_mesh(shape)
  n = int(np.prod(list(shape.values()) or [1]))
  if n > jax.device_count():
    raise ValueError(f"--mesh={shape} needs {n} devices, only {jax.device_count()} present")
  return sharding.make_mesh(shape, jax.devices()[:n])


def device_info() -> dict:
  device = jax.local_devices()[0]
  return dict(backend=jax.default_backend(), device_kind=device.device_kind,
              devices=jax.device_count(), processes=jax.process_count(),
              jax_version=jax.__version__)


def print_summary(summary: dict) -> None:
  print(json.dumps(summary, sort_keys=True), flush=True)


def run_cli(flag_values: flags.FlagValues, run: Callable[[], dict], doc: str) -> None:
  """absl entry point for a module whose flags live in the private `flag_values`."""

  def parse(argv):
    if {"-h", "--help", "--helpshort", "--helpfull"} & set(argv[1:]):
      print(doc)
      print(flag_values.get_help())
      sys.exit(0)
    try:
      rest = flag_values(argv, known_only=True)
      return flags.FLAGS(rest)
    except flags.Error as e:
      sys.exit(f"error: {e} (see --help)")

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]}")
    try:
      run()
    except ValueError as e:
      sys.exit(f"error: {e}")

  app.run(main, flags_parser=parse)


# -- the benchmark ----------------------------------------------------------------------------

def measure_peaks(dtype: str, matmul_size: int = 0) -> dict:
  """Per-device peaks: an n^3 matmul in `dtype` timed now, and the bf16 datasheet value."""
  n = matmul_size or (1024 if on_cpu() else 8192)
  measured = hardware.measure_matmul_flops(n, dtype=_JNP_DTYPES[dtype])
  datasheet = hardware.datasheet_peak_flops(jax.local_devices()[0])
  return dict(matmul_n=n, matmul_dtype=dtype, matmul_tflops_per_device=measured / 1e12,
              datasheet_bf16_tflops_per_device=datasheet / 1e12 if datasheet else None)


def random_batch(trainer: Trainer, batch_size: int, seq_len: int, vocab: int, seed: int):
  """A global batch of uniform random tokens, each process supplying its own rows."""
  rows = batch_size // jax.process_count()
  rng = np.random.default_rng([seed, jax.process_index()])
  tokens = rng.integers(0, vocab, size=(rows, seq_len + 1), dtype=np.int32)
  return trainer.global_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, batch_size)


def benchmark_train(model: ModelConfig, batch_size: int, seq_len: int, steps: int,
                    mesh: jax.sharding.Mesh, peaks: dict, warmup: int = 2, seed: int = 0,
                    name: str = "custom") -> dict:
  """Times `steps` train steps after `warmup` untimed ones; returns every figure as a dict."""
  if steps < 1 or warmup < 1:
    raise ValueError(f"--steps ({steps}) and --warmup ({warmup}) must be >= 1")
  if seq_len > model.max_len:
    raise ValueError(f"--seq_len={seq_len} exceeds the preset's max_len={model.max_len}; "
                     "lower --seq_len")
  config = Config(model=model, data=DataConfig(seq_len=seq_len),
                  train=TrainConfig(batch_size=batch_size, steps=warmup + steps, seed=seed,
                                    warmup_steps=1),
                  mesh=MeshConfig(**{k: mesh.shape[k] for k in sharding.MESH_AXES}))
  trainer = Trainer(config, mesh)
  trainer.check_batch_size()
  state, frozen = trainer.init(seed)
  batch = random_batch(trainer, batch_size, seq_len, model.vocab_size, seed)
  start = time.perf_counter()
  state, metrics = trainer.train_step(state, frozen, batch)
  jax.block_until_ready(state)
  compile_seconds = time.perf_counter() - start
  for _ in range(warmup - 1):
    state, metrics = trainer.train_step(state, frozen, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.train_step(state, frozen, batch)
  jax.block_until_ready(state)
  elapsed = time.perf_counter() - start
  metrics = jax.device_get(metrics)

  tokens_per_s = steps * batch_size * seq_len / elapsed
  counts = flops.param_counts(model)
  per_token = {m: flops.flops_per_token(model, seq_len, m) for m in flops.METHODS}
  n_dev = mesh.size
  matmul_total = peaks["matmul_tflops_per_device"] * 1e12 * n_dev
  datasheet = peaks["datasheet_bf16_tflops_per_device"]
  result = dict(
      preset=name, params=counts["total"], params_active=counts["active"],
      params_non_embedding=counts["non_embedding"], dtype=model.dtype, remat=model.remat,
      attention_impl=attention_impl(model), batch_size=batch_size, seq_len=seq_len,
      steps=steps, mesh={k: int(v) for k, v in mesh.shape.items()}, devices=n_dev,
      compile_seconds=compile_seconds, step_seconds=elapsed / steps, tokens_per_s=tokens_per_s,
      tokens_per_s_per_device=tokens_per_s / n_dev, flops_per_token=per_token,
      achieved_tflops={m: tokens_per_s * f / 1e12 for m, f in per_token.items()},
      mfu_vs_matmul={m: flops.mfu(tokens_per_s, f, matmul_total) for m, f in per_token.items()},
      mfu_vs_datasheet=({m: flops.mfu(tokens_per_s, f, datasheet * 1e12 * n_dev)
                         for m, f in per_token.items()} if datasheet else None),
      loss=float(metrics["loss"]))
  if model.is_moe:
    result.update(flops_basis="active parameters", capacity_factor=model.capacity_factor,
                  dispatch=("capacity" if model.capacity_factor > 0 else
                            f"dropless-{moe._resolve_dropless_impl('auto')}"),
                  moe_drop_fraction=float(metrics["moe_drop_fraction"]))
  return result


def describe(result: dict) -> str:
  f = result["flops_per_token"]
  mfu_m = result["mfu_vs_matmul"]
  ds = result["mfu_vs_datasheet"]
  lines = [
      f"{result['preset']} ({result['params'] / 1e6:.1f}M params, {result['dtype']}, "
      f"remat={result['remat']}, attention={result['attention_impl']}"
      + (f", {result['dispatch']} dispatch cf={result['capacity_factor']}"
         if "dispatch" in result else "") + f") on {result['devices']} device(s):",
      f"  batch {result['batch_size']} x {result['seq_len']}: {result['tokens_per_s']:,.0f} "
      f"tokens/s, {1e3 * result['step_seconds']:.1f} ms/step (compile "
      f"{result['compile_seconds']:.1f} s)",
      f"  FLOPs/token: exact {f['exact']:.4g}, 6N {f['6n']:.4g}, PaLM {f['palm']:.4g}; "
      f"achieved {result['achieved_tflops']['exact']:.3g} TFLOP/s (exact)",
      f"  MFU vs measured matmul: exact {100 * mfu_m['exact']:.1f}%, 6N {100 * mfu_m['6n']:.1f}%, "
      f"PaLM {100 * mfu_m['palm']:.1f}%"
      + (f"; vs datasheet bf16: exact {100 * ds['exact']:.1f}%" if ds else "")]
  if "moe_drop_fraction" in result:
    lines.append(f"  MoE dropped assignments: {100 * result['moe_drop_fraction']:.2f}%")
  return "\n".join(lines)


def run(presets: Sequence[str], batch_size: int, seq_len: int, steps: int, warmup: int = 2,
        dtype: str = "", remat: str = "", attention_impl_: str = "",
        capacity_factor: float | None = None, compare_dispatch: bool = False,
        mesh: str = "data=-1", matmul_size: int = 0, seed: int = 0) -> dict:
  """Benchmarks each preset; prints a readable block per run and returns the summary."""
  dtype = dtype or default_dtype()
  for name in presets:  # fail on bad input before measuring anything
    if compare_dispatch and not model_config_lib.preset(name).is_moe:
      raise ValueError(f"--compare_dispatch needs MoE presets (e.g. moe_tiny); {name} is dense")
  device_mesh = build_mesh(parse_mesh(mesh))
  peaks = measure_peaks(dtype, matmul_size)
  print(f"reference matmul {peaks['matmul_n']}^3 {dtype}: "
        f"{peaks['matmul_tflops_per_device']:.3g} TFLOP/s per device; datasheet bf16: "
        f"{peaks['datasheet_bf16_tflops_per_device'] or 'unknown'}", flush=True)
  results = []
  for name in presets:
    overrides = dict(dtype=dtype)
    if remat:
      overrides["remat"] = remat
    if attention_impl_:
      overrides["attention_impl"] = attention_impl_
    base = model_config_lib.preset(name, **overrides)
    variants = [base]
    if capacity_factor is not None:
      variants = [dataclasses.replace(base, capacity_factor=capacity_factor)]
    if compare_dispatch:
      cf = variants[0].capacity_factor
      cf = cf if cf > 0 else _DEFAULT_CAPACITY_FACTOR
      variants = [dataclasses.replace(base, capacity_factor=0.0),
                  dataclasses.replace(base, capacity_factor=cf)]
    length = min(seq_len, base.max_len)
    if length < seq_len:
      logging.warning("%s: --seq_len=%d exceeds max_len; using %d", name, seq_len, length)
    pair = []
    for model in variants:
      result = benchmark_train(model, batch_size, length, steps, device_mesh, peaks, warmup, seed,
                               name)
      print(describe(result), flush=True)
      pair.append(result)
    if compare_dispatch:
      speedup = pair[1]["tokens_per_s"] / pair[0]["tokens_per_s"]
      print(f"  capacity (cf={pair[1]['capacity_factor']}) vs dropless: {speedup:.2f}x tokens/s",
            flush=True)
      pair[1]["speedup_vs_dropless"] = speedup
    results.extend(pair)
  summary = dict(benchmark="train", **device_info(), **peaks, results=results)
  print_summary(summary)
  return summary


def _run_from_flags() -> dict:
  defaults = _CPU_DEFAULTS if on_cpu() else _ACCELERATOR_DEFAULTS
  f = _FLAGS
  presets = [p.strip() for p in (f.preset or defaults["preset"]).split(",") if p.strip()]
  return run(presets, batch_size=f.batch_size or defaults["batch_size"],
             seq_len=f.seq_len or defaults["seq_len"], steps=f.steps or defaults["steps"],
             warmup=f.warmup, dtype=f.dtype, remat=f.remat, attention_impl_=f.attention_impl,
             capacity_factor=f.capacity_factor, compare_dispatch=f.compare_dispatch,
             mesh=f.mesh, matmul_size=f.matmul_size, seed=f.seed)


def parse_flags_and_run(flag_values, run_fn, argv: Sequence[str]) -> dict:
  """Parses argv (program name first) into `flag_values`, then returns run_fn()."""
  flag_values.unparse_flags()
  rest = flag_values(list(argv))
  if len(rest) > 1:
    raise ValueError(f"unexpected arguments {rest[1:]}")
  return run_fn()


def main(argv: Sequence[str]) -> dict:
  """Parses argv (program name first) into this module's flags and runs; returns the summary."""
  return parse_flags_and_run(_FLAGS, _run_from_flags, argv)


if __name__ == "__main__":
  run_cli(_FLAGS, _run_from_flags, __doc__)
