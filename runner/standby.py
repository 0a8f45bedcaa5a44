"""Standby: a worker that boots, then waits for the word to serve.

A supervisor that keeps a *spare* worker booted -- app imported, backend
prepared, socket checked -- can replace a dead worker in the time it takes
to write one byte, instead of the ~100 ms a fresh Python process needs to
boot. juggler does this (``spare_processes``): it passes the read end of a
pipe in ``JUGGLER_STANDBY_FD``. The runner then sends ``READY=1`` with
``STATUS=standby`` and blocks on that pipe before serving: one byte means
"serve now"; end of file means "not needed", and the runner exits 0.

While it waits, a stop signal (recorded by the runner's boot handlers) ends
the wait at once, and the runner exits 0 without serving: stopping an idle
spare costs nothing.
"""

from __future__ import annotations

import logging
import os

from juggler.backends.signals import StopRequest
from juggler.runner.errors import BootError
from juggler.runner.notify import Notifier

log = logging.getLogger("juggler.runner")

STANDBY_ENV = "JUGGLER_STANDBY_FD"


def standby_fd_from_environ() -> int | None:
    """The standby pipe, removed from the environment (the app's children
    must not see it)."""
    value = os.environ.pop(STANDBY_ENV, None)
    if value is None:
        return None
    try:
        fd = int(value)
        os.fstat(fd)
    except (ValueError, OSError):
        raise BootError(f"{STANDBY_ENV}={value!r} is not an open descriptor") from None
    os.set_inheritable(fd, False)
    return fd


def wait_for_promotion(fd: int, notifier: Notifier, stop: StopRequest) -> bool:
    """Report standby, then block until told to serve (True), or not to or
    to stop (False)."""
    notifier.send("READY=1", "STATUS=standby", f"MAINPID={os.getpid()}")
    log.debug("standby: pid=%d waiting to be promoted", os.getpid())
    try:
        if not stop.wait_readable(fd):
            return False
        word = os.read(fd, 1)
    finally:
        os.close(fd)
    if not word:
        log.debug("standby: pid=%d released without serving", os.getpid())
        return False
    log.debug("standby: pid=%d promoted", os.getpid())
    return True
