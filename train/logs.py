"""Keeps the console readable: our progress lines at INFO, library chatter at WARNING."""

import logging as std_logging

from absl import logging

_NOISY_PATH_PARTS = ("/orbax/", "/etils/", "/tensorstore/")


class _LibraryFilter(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    return not any(part in record.pathname for part in _NOISY_PATH_PARTS)


def quiet_library_logs() -> None:
  """Drops INFO records emitted from orbax/etils code; keeps warnings and errors."""
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(_LibraryFilter())
