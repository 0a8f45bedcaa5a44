"""Stopping the meinheld backend: its signals, its drain and the deadline.

meinheld's loop is C code that holds the main thread, and while a request
is in the app nothing of meinheld runs: not its watchdog, not the timer of
its own ``stop``. So the stop has two halves (see backends/meinheld.py for
what meinheld itself does):

- ``MeinheldLoop.tick``, meinheld's watchdog, starts meinheld's drain
  (``stop(graceful_timeout)``) whenever the loop is free;
- ``StopWatch``, a thread of ours, hears the signal through the wake-up
  pipe that the C-level signal handler writes to, whatever the main thread
  is doing. It sends STOPPING=1 at once and keeps the graceful deadline:
  if the loop has not ended by then, the requests still in the app are cut
  by ending the process with status 0.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import threading
import time
from types import FrameType
from typing import Any

from juggler.backends.base import ServeContext
from juggler.backends.signals import STOP_SIGNALS, exit_now
from juggler.runner.errors import EXIT_OK

log = logging.getLogger("juggler.backends.meinheld")

# picoev keeps timeouts in a wheel of 128 one-second slots; a longer timeout
# would be cut silently, so it is cut here, with a warning.
MAX_TIMEOUT_SECONDS = 127
# After stop(n), meinheld ends its loop within n seconds plus one slot of
# picoev's one-second wheel; the watch thread gives it that long before it
# cuts, so that a loop that is free ends the clean way (post-hook and all).
STOP_TIMER_SLACK = 1.5


def whole_seconds(timeout: float, what: str) -> int:
    """A timeout as meinheld takes it: whole seconds, 1 to 127."""
    seconds = max(1, math.ceil(timeout))
    if seconds > MAX_TIMEOUT_SECONDS:
        log.warning(
            "meinheld cannot time beyond %ds; %s=%gs cut to %ds",
            MAX_TIMEOUT_SECONDS,
            what,
            timeout,
            MAX_TIMEOUT_SECONDS,
        )
        seconds = MAX_TIMEOUT_SECONDS
    return seconds


class MeinheldLoop:
    """The runner's side of meinheld's loop: readiness, signals, the drain.

    The signal handlers are plain ``signal.signal`` ones that record, not
    ``StopRequest``, whose waiter would be the main thread that meinheld
    holds. What they record is acted on by ``tick``, in meinheld's loop;
    the watch thread learns of the same signals from their wake-up bytes.
    """

    def __init__(self, server: Any, context: ServeContext) -> None:
        self._server = server
        self._context = context
        self.signum: int | None = None
        self._draining = False
        self.watch = StopWatch(context)

    def started(self) -> None:
        """First pass of the loop: the listening socket is being watched."""
        # run() has just put its own SIGINT/SIGTERM handlers in place.
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop_signal)
        signal.signal(signal.SIGQUIT, self._on_quit_signal)
        self.watch.start()
        self._context.ready()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            exit_now(signum)
        if self.signum is None:
            self.signum = signum

    def _on_quit_signal(self, signum: int, frame: FrameType | None) -> None:
        exit_now(signum)

    def tick(self) -> None:
        """Called by meinheld about once a second; starts a requested drain."""
        if self.signum is None or self._draining:
            return
        self._draining = True
        # Done already by the watch thread, unless the app took the wake-up
        # descriptor for itself (asyncio does, for one).
        self.watch.begin(self.signum)
        # From now on a response closes its connection, and a connection
        # that turns idle is closed after 2 s rather than the keep-alive
        # timeout (meinheld's value for "off").
        self._server.set_keepalive(0)
        options = self._context.options
        seconds = whole_seconds(options.graceful_timeout, "--graceful-timeout")
        self._server.stop(seconds)
        self.watch.extend_deadline(seconds + STOP_TIMER_SLACK)


class StopWatch:
    """Stop signals and the graceful deadline, off meinheld's thread.

    A daemon thread reads the signal numbers that the C-level handler
    writes to the wake-up pipe. The first SIGTERM or SIGINT begins the stop;
    a second SIGINT or a SIGQUIT exits at once, even while the app holds
    the main thread. The deadline is ``graceful_timeout`` after the stop
    began, or the time by which meinheld's own timer should have ended a
    free loop, whichever is later.
    """

    LOOP_ENDED = 0  # a byte that no signal writes

    def __init__(self, context: ServeContext) -> None:
        self._context = context
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(self._read_fd, True)
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._ended = False
        self._thread = threading.Thread(
            target=self._run, name="meinheld-stop-watch", daemon=True
        )

    def start(self) -> None:
        """Take the wake-up bytes and start the thread; main thread only.

        The pipe is never closed: handlers that stay installed after the
        loop ends must not write to a descriptor number reused since.
        """
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread.start()

    def begin(self, signum: int) -> None:
        """The first stop: log it, report draining, start the deadline."""
        with self._lock:
            if self._deadline is not None:
                return
            timeout = self._context.options.graceful_timeout
            self._deadline = time.monotonic() + timeout
        log.info(
            "stop requested: signal=%s pid=%d",
            signal.Signals(signum).name,
            os.getpid(),
        )
        self._context.draining()

    def extend_deadline(self, seconds: float) -> None:
        """meinheld's own timer runs: let it end the loop before we cut."""
        with self._lock:
            own = time.monotonic() + seconds
            if self._deadline is None or own > self._deadline:
                self._deadline = own

    def loop_ended(self) -> None:
        """``run`` returned: nothing is left to cut; main thread only."""
        self._ended = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_fd, bytes([self.LOOP_ENDED]))

    def _run(self) -> None:
        while not self._ended:
            timeout = self._remaining()
            if timeout is not None and timeout <= 0:
                self._cut()
                return
            if select.select([self._read_fd], [], [], timeout)[0]:
                for signum in os.read(self._read_fd, 64):
                    self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGQUIT:
            exit_now(signum)
        if signum not in STOP_SIGNALS:
            return  # the loop's end, or a signal the app handles
        if signum == signal.SIGINT and self._remaining() is not None:
            exit_now(signum)
        self.begin(signum)

    def _remaining(self) -> float | None:
        with self._lock:
            if self._deadline is None:
                return None
            return self._deadline - time.monotonic()

    def _cut(self) -> None:
        if self._ended:
            return
        log.warning(
            "cut: requests still in the app after graceful_timeout=%gs pid=%d",
            self._context.options.graceful_timeout,
            os.getpid(),
        )
        # The exit waitress and gevent make once their graceful timeout has
        # cut requests; only this thread can end the process here.
        os._exit(EXIT_OK)
