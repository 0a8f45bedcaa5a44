"""Logging set-up for the runner: one line per event, lazy arguments."""

from __future__ import annotations

import logging
import sys

from juggler.runner.errors import BootError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, output: str) -> None:
    """Send every ``juggler`` log line to ``output`` (``-`` is stderr)."""
    if output == "-":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = logging.FileHandler(output)
        except OSError as exc:
            raise BootError(
                f"cannot open --log-output {output}: {exc.strerror}"
            ) from None
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
