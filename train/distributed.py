"""Multi-host start-up: the only thing that changes between one host and many."""

import os

import jax
from absl import logging

# Environment variables that mean "this process is one of several launched together".
_CLUSTER_ENV_HINTS = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                      "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def _launched_as_cluster() -> bool:
  for name in _CLUSTER_ENV_HINTS:
    value = os.environ.get(name)
    if value and not (name.endswith(("NTASKS", "SIZE")) and value == "1"):
      return True
  return False


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
  """Calls jax.distributed.initialize when flags or the environment ask for several processes.

  Explicit flags win; otherwise a recognised cluster environment (SLURM, Open MPI, Cloud TPU,
  JAX_COORDINATOR_ADDRESS) triggers auto-detection. On CPU, collectives go through gloo.
  Must run before any other JAX call.
  """
  explicit = bool(coordinator_address) or num_processes > 1
  if not explicit and not _launched_as_cluster():
    return
  if explicit and not (coordinator_address and num_processes > 0 and process_id >= 0):
    raise ValueError("multi-process runs need all of --coordinator_address=HOST:PORT, "
                     "--num_processes=N and --process_id=I (0 <= I < N)")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())

