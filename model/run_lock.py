"""One writer per run directory: an advisory lock file naming its owner.

`with RunLock(workdir, "train"):` takes an exclusive `fcntl.flock` on `DIR/.lock` and
writes the owner (host, pid, command, start time) into it. The kernel drops the lock when
its process dies, however it dies, so a lock left by a killed process is simply taken
over (the file still names the dead owner; the new owner overwrites it). A live owner is a
clear error naming it. The processes of one multi-host run share the run directory: only
process 0 takes the lock, since it belongs to the run, not to each process.
"""

import datetime
import fcntl
import json
import os
import socket

LOCK_FILE = ".lock"


class RunDirBusy(ValueError):
  """Another live process holds the run directory's lock."""


class RunLock:
  """Exclusive lock of a run directory for the lifetime of a `with` block."""

  def __init__(self, workdir: str, command: str, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.command = command
    self.enabled = enabled
    self._fd = None

  def __enter__(self):
    if not self.enabled:
      return self
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = self._read_owner()
      os.close(self._fd)
      self._fd = None
      raise RunDirBusy(
          f"{os.path.dirname(self.path)} is in use by {owner}; wait for that process to "
          "finish (or stop it), or pass another --workdir") from None
    previous = self._read_owner()
    if previous != "an unknown process":
      # The last owner died without releasing the lock (the kernel released it).
      from absl import logging  # pylint: disable=g-import-not-at-top
      logging.warning("taking over the lock of %s from %s, which is no longer running",
                      os.path.dirname(self.path), previous)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "command": self.command,
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, json.dumps(record).encode(), 0)
    return self

  def _read_owner(self) -> str:
    try:
      record = json.loads(os.pread(self._fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
      record = {}
    if not record.get("pid"):
      return "an unknown process"
    return (f"{record.get('command', '?')} (pid {record['pid']} on {record.get('host', '?')}, "
            f"started {record.get('started', '?')})")

  def __exit__(self, *exc):
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # a clean exit leaves no owner behind
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
