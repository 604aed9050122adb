"""Peak FLOP/s of the devices in use: datasheet values, and a large matmul measured now."""

import time

import jax
import jax.numpy as jnp

# Dense bfloat16 peak per chip (datasheet, no sparsity).
_DATASHEET_PEAK_BF16 = (
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("l4", 121e12),
    ("tpu v6", 918e12),
    ("tpu v5p", 459e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v4", 275e12),
)


def datasheet_peak_flops(device: jax.Device | None = None) -> float | None:
  """bf16 dense peak FLOP/s of one device, or None when unknown (e.g. CPUs)."""
  kind = (device or jax.devices()[0]).device_kind.lower()
  for name, peak in _DATASHEET_PEAK_BF16:
    if name in kind:
      return peak
  return None


def measure_matmul_flops(n: int | None = None, dtype=None, repeats: int = 5) -> float:
  """FLOP/s of one device on an n x n x n matmul, the best of `repeats` timed runs.

  The default size and dtype suit the backend: bf16 8192^3 on accelerators, f32 1024^3 on CPU.
  """
  on_cpu = jax.default_backend() == "cpu"
  n = n or (1024 if on_cpu else 8192)
  dtype = dtype or (jnp.float32 if on_cpu else jnp.bfloat16)
  device = jax.local_devices()[0]  # jax.devices()[0] belongs to process 0 only
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  b = jax.device_put(jnp.ones((n, n), dtype), device)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n**3 / best


def measure_copy_bandwidth(n_bytes: int | None = None, repeats: int = 5) -> float:
  """Bytes/s of one device copying a large array (read + write counted)."""
  on_cpu = jax.default_backend() == "cpu"
  n_bytes = n_bytes or (256 << 20 if on_cpu else 2 << 30)
  x = jax.device_put(jnp.ones((n_bytes // 4,), jnp.float32), jax.local_devices()[0])
  copy = jax.jit(lambda v: v + 1.0)
  copy(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    copy(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n_bytes / best


def measure_inplace_copy_bandwidth(n_bytes: int | None = None, repeats: int = 5) -> float:
  """Bytes/s (read + write) of copying a large array into its own, donated, buffer.

  Unlike measure_copy_bandwidth no output is allocated per call: on CPU, first-touch page
  faults on a fresh multi-hundred-MB output dominate a plain copy (measured ~4 GB/s fresh
  vs ~19 GB/s in place on a shared 2-core Xeon). Accelerators pool memory, so there the two
  should agree. This is the reference for steady-state loops such as decoding.
  """
  on_cpu = jax.default_backend() == "cpu"
  n_bytes = n_bytes or (256 << 20 if on_cpu else 2 << 30)
  copy = jax.jit(lambda v: v + 1.0, donate_argnums=0)
  x = copy(jax.device_put(jnp.ones((n_bytes // 4,), jnp.float32), jax.local_devices()[0]))
  x.block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    x = copy(x)
    x.block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n_bytes / best
