"""Building a cache entry once across the hosts of a multi-host run.

One process: build. Several: first find out whether every host sees the same cache
directory (host 0 writes a probe file with a random name it broadcasts; all hosts report
whether they see it). If so, host 0 builds and the others wait on the shared file system
for the entry to be complete (or for host 0's failure note, or a timeout that names the
fix); if not, every host builds its own copy, as a single host would.
"""

import os
import secrets
import time
import uuid

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

WAIT_SECONDS = 4 * 3600.0
_POLL_SECONDS = 2.0
FAILURE_FILE = "build_failed.txt"


def cache_is_shared(directory: str) -> bool:
  """Whether every process sees files host 0 writes under `directory`'s parent."""
  root = os.path.dirname(os.path.abspath(directory))
  nonce = secrets.randbits(62) if jax.process_index() == 0 else 0
  nonce = int(multihost_utils.broadcast_one_to_all(np.array(nonce, np.int64)))
  probe = os.path.join(root, f".host-probe-{nonce:x}")
  if jax.process_index() == 0:
    os.makedirs(root, exist_ok=True)
    with open(probe, "w") as f:
      f.write(str(uuid.uuid4()))
  multihost_utils.sync_global_devices("cache probe written")
  seen = np.asarray(multihost_utils.process_allgather(np.array(os.path.exists(probe))))
  multihost_utils.sync_global_devices("cache probe read")
  if jax.process_index() == 0:
    os.remove(probe)
  return bool(seen.all())


def wait_for(directory: str, is_complete, timeout_s: float = WAIT_SECONDS) -> None:
  """Polls until `is_complete()`; raises if host 0 recorded a failure or time runs out."""
  start = time.monotonic()
  failure = os.path.join(directory, FAILURE_FILE)
  while not is_complete():
    if os.path.exists(failure):
      with open(failure) as f:
        raise RuntimeError(f"host 0 failed to build {directory}: {f.read().strip()}")
    if time.monotonic() - start > timeout_s:
      raise TimeoutError(
          f"waited {timeout_s:.0f} s for host 0 to build {directory}; check host 0's log, or "
          "give every host its own cache (a --config.data.cache_dir not on shared storage) "
          "so that each builds its own copy")
    time.sleep(_POLL_SECONDS)


def build_once(directory: str, build, is_complete, timeout_s: float = WAIT_SECONDS):
  """`build()` on one host when the cache is shared (the others wait, then `build()` finds
  the finished entry), on every host otherwise. Every host takes the same branch: the
  collectives in `cache_is_shared` must be entered by all of them."""
  if jax.process_count() == 1:
    return build()
  failure = os.path.join(directory, FAILURE_FILE)
  if jax.process_index() == 0 and os.path.exists(failure):
    os.remove(failure)  # a stale note; removed before the probe's barriers
  if not cache_is_shared(directory):
    return build()
  if jax.process_index() == 0:
    try:
      return build()
    except BaseException as e:
      os.makedirs(directory, exist_ok=True)
      with open(failure, "w") as f:
        f.write(f"{type(e).__name__}: {e}")
      raise
  if not is_complete():
    logging.info("waiting for host 0 to build %s on the shared file system", directory)
    wait_for(directory, is_complete, timeout_s)
  return build()
