"""Stop signals for backends whose main thread can wait in plain Python.

The runner's contract: SIGTERM or SIGINT starts a graceful stop (stop
accepting, drain, exit 0); a second SIGINT, or SIGQUIT at any time, exits at
once. Event-loop backends (asyncio, gevent) register the same behaviour with
their loop; threaded ones serve in worker threads while the main thread
blocks in ``StopRequest.wait()``, then, to drain, in ``wait_until()``.

The handlers only record the signal and write one byte to a pipe; the
waiting main thread does the work. They never log and never take a lock
(taking a lock in a handler that interrupted its holder deadlocks).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import asyncio

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_now(signum: int) -> NoReturn:
    """Leave without draining: the operator asked twice, or sent SIGQUIT."""
    os._exit(128 + signum)


class StopRequest:
    """Turns stop signals into something a main thread can block on."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(self._read_fd, True)

    def install(self) -> None:
        """Install the handlers; must run in the main thread."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop_signal)
        signal.signal(signal.SIGQUIT, self._on_quit_signal)
        # The kernel may deliver a signal to any thread. Python then runs the
        # handler only once the main thread executes bytecode, which it never
        # does while blocked in wait(); the C-level handler's write to this
        # pipe, made from whichever thread took the signal, wakes it.
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            exit_now(signum)
        if self.signum is None:
            self.signum = signum
        # A full pipe already holds a wake-up byte.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_fd, b"\0")

    def _on_quit_signal(self, signum: int, frame: FrameType | None) -> None:
        exit_now(signum)

    def trigger(self, signum: int = signal.SIGTERM) -> None:
        """Request a stop from code (a vanished parent, a test)."""
        self._on_stop_signal(signum, None)

    def call_on_loop(
        self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]
    ) -> None:
        """Have ``loop`` call ``callback`` once, when the first stop arrives.

        For asyncio backends. The handlers stay the ones above, so a second
        SIGINT or a SIGQUIT exits at once even while the app blocks the loop.
        """

        def on_wake_up() -> None:
            os.read(self._read_fd, 1)
            if self.signum is not None:
                loop.remove_reader(self._read_fd)
                callback()

        loop.add_reader(self._read_fd, on_wake_up)

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until a stop is requested; return its signal number.

        With a timeout, return None when it passes first.
        """
        if timeout is not None and self.signum is None:
            select.select([self._read_fd], [], [], timeout)
        while self.signum is None and timeout is None:
            os.read(self._read_fd, 1)
        return self.signum

    def wait_readable(self, fd: int) -> bool:
        """Block until ``fd`` can be read (True) or a stop is requested
        (False, also when both happen)."""
        while self.signum is None:
            readable = select.select([fd, self._read_fd], [], [])[0]
            if self._read_fd in readable:
                os.read(self._read_fd, 4096)
            elif fd in readable:
                return self.signum is None
        return False

    def wake(self) -> None:
        """Wake the thread blocked in ``wait_until``; callable from any thread.

        A backend whose threads may outlive the stop never calls ``close()``,
        so that a late wake cannot write to a reused descriptor number.
        """
        # A full pipe already holds a wake-up byte.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_fd, b"\0")

    def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Block until ``done()``; False if ``timeout`` seconds pass first.

        For a drain after the stop: ``done()`` is checked again on each
        ``wake()`` and each signal, and since a signal wakes this wait, a
        second SIGINT or a SIGQUIT still exits at once.
        """
        deadline = time.monotonic() + timeout
        # Pending signal handlers run at the loop's jump back, before done().
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if select.select([self._read_fd], [], [], remaining)[0]:
                os.read(self._read_fd, 4096)
        return True

    def close(self) -> None:
        os.close(self._read_fd)
        os.close(self._write_fd)
