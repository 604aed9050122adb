"""The one pattern every command-line entry point follows (train, infer, experiments).

`run_cli(name, body)`: library chatter at WARNING, our progress at INFO, and a user error
(bad flag, missing file, mismatched run) printed as one line `name: error: ...` with exit
status 1, while an unanticipated exception keeps its traceback.
"""

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


def run_cli(name: str, body: Callable[[], object], extra_errors: tuple = ()):
  """Runs `body()` under the shared logging setup and user-error handling."""
  quiet_library_logs()
  try:
    return body()
  except USER_ERRORS + tuple(extra_errors) as e:
    sys.exit(f"{name}: error: {e}")
