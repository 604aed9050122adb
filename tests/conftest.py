"""Test-wide setup: 8 simulated CPU devices (set before jax is imported) and shared fixtures."""

import os

# Optimisation level 0: tiny test programs compile 3-4x faster and run fast enough.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end test taking more than ~20 s on 2 cores")


def pytest_sessionstart(session):
  """Token/tokenizer caches go to a temp dir, never to ~/.cache."""
  import tempfile
  os.environ.setdefault("JAXLM_CACHE", tempfile.mkdtemp(prefix="jaxlm_test_cache_"))
