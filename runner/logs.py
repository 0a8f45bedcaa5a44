"""Logging set-up shared by the runner and the supervisor.

One line per event, with the time, the pid and the logger name, so that the
interleaved output of a supervisor and its workers stays readable.
"""

from __future__ import annotations

import logging
import sys

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, output: str) -> None:
    """Send every log line to ``output`` (``-`` is stderr).

    Raises ``OSError`` when the file cannot be opened; the caller words it.
    """
    if output == "-":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(output)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
