"""The one pattern every command-line entry point follows (train, infer, experiments).

`run_cli(name, body)`: library chatter at WARNING, our progress at INFO, and a user error
(bad flag, missing file, mismatched run) printed as one line `name: error: ...` with exit
status 1, while an unanticipated exception keeps its traceback.
"""

import errno
import logging as std_logging
import sys
from typing import Callable

from absl import logging

_NOISY_PATH_PARTS = ("/orbax/", "/etils/", "/tensorstore/")
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)


class _LibraryFilter(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    return not any(part in record.pathname for part in _NOISY_PATH_PARTS)


def quiet_library_logs() -> None:
  """Drops INFO records emitted from orbax/etils code; keeps warnings and errors."""
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(_LibraryFilter())


# File-system failures a user can act on, with the fix to name.
_OS_FIXES = {
    errno.ENOSPC: "free disk space (or point --workdir / JAXLM_CACHE elsewhere) and rerun: "
                  "the run resumes from its last checkpoint",
    errno.EDQUOT: "free space within your quota and rerun",
    errno.EACCES: "make it writable, or choose another --workdir / JAXLM_CACHE",
    errno.EPERM: "make it writable, or choose another --workdir / JAXLM_CACHE",
    errno.EROFS: "the file system is read-only: choose another --workdir / JAXLM_CACHE",
    errno.ENOTDIR: "a path component is a file, not a folder: choose another path",
    errno.EEXIST: "something is already there: remove it or choose another path",
}


def os_error_message(error: OSError) -> str | None:
  """One line naming the path and the fix, or None for an unanticipated OSError."""
  fix = _OS_FIXES.get(error.errno)
  if fix is None:
    return None
  path = error.filename or "a file"
  return f"{error.strerror or error} ({path}); {fix}"


def run_cli(name: str, body: Callable[[], object], extra_errors: tuple = ()):
  """Runs `body()` under the shared logging setup and user-error handling."""
  quiet_library_logs()
  try:
    return body()
  except USER_ERRORS + tuple(extra_errors) as e:
    sys.exit(f"{name}: error: {e}")
  except OSError as e:
    message = os_error_message(e)
    if message is None:
      raise  # unanticipated: keep the traceback, do not hide bugs
    sys.exit(f"{name}: error: {message}")


def source_run(checkpoint: str | None, workdir: str | None, out: str | None,
               out_name: str = "NEW_DIR") -> str:
  """The run (or checkpoint) a converting CLI reads; both it and --out are required."""
  path = checkpoint or workdir
  if not path or not out:
    raise ValueError("give --workdir=RUN_DIR (or --checkpoint=RUN_DIR/checkpoints/STEP) "
                     f"and --out={out_name}")
  return path
