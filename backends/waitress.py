"""The waitress backend: a thread pool behind an asyncore-style socket loop.

Theory of operation. waitress has one loop thread that owns every socket
(the listener, the client channels and a wake-up pipe it calls the trigger)
and a pool of task threads that run the app. The loop runs in a thread of
ours; the main thread blocks in ``StopRequest.wait()``. Both could have been
done in the main thread, polling the stop flag between loop iterations, but
Python retries ``poll()`` after a signal (PEP 475), so a stop would wait for
the loop's timeout; the thread keeps the stop instant and the signal handling
in the one shared place.

Nothing but the loop thread touches the socket map. On a stop, the main
thread hands the loop two steps through waitress's trigger (its documented
way to run a function in the loop thread) and waits with a deadline:

1. *drain*: close this worker's listening descriptor (sibling workers keep
   accepting on theirs), close the idle keep-alive channels, and answer what
   is in flight with ``Connection: close``. The loop ends once no channel is
   left.
2. *cut*, only past ``graceful_timeout``: close every channel. Task threads
   still inside the app are daemons and end with the process.

A channel is in flight while it holds parsed requests (queued or running),
unsent response bytes, or a request still being received.

waitress times a channel out only when it is silent and holds no request,
so after each pass the loop also closes a channel whose head is not in
``--header-timeout`` after its first bytes (a trickle), or whose body or
response made no progress for ``--io-timeout`` (a client that reads nothing
would hold a task thread for good); see ``_Loop.close_stalled``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from juggler.backends.base import (
    App,
    Backend,
    HeadLimits,
    ServeContext,
    ServeOptions,
    require,
)
from juggler.backends.head import guard_response
from juggler.backends.signals import StopRequest
from juggler.backends.waitress_parser import define_parser_class

log = logging.getLogger("juggler.backends.waitress")

# waitress's own bound on a request head: it has no limit per line or per
# field, only this total, set to the largest head the limits admit, capped
# here: a head past 256 KiB gets 431 even when each part is in bounds. The
# parts are checked by ``LimitedParser``.
WAITRESS_MAX_HEAD = 262_144
# Open connections past which a worker stops accepting (the kernel's backlog,
# shared with the siblings, holds the next ones): wsgiref's and gevent's bound.
MAX_CONNECTIONS = 1000
# How long the main thread waits for the loop thread to finish a cut; the
# loop never blocks longer than one poll, so this is only a safety net.
CUT_JOIN_TIMEOUT = 5.0
# How often, at most, heads and transfers are checked for their deadlines.
HEAD_CHECK = 0.25
# How long idle task threads get to leave after a complete drain.
IDLE_THREADS_TIMEOUT = 2.0


class WaitressBackend(Backend):
    """Serves WSGI apps with waitress, draining in-flight requests on stop."""

    name = "waitress"
    interfaces = frozenset({"wsgi"})
    package = "waitress"
    extra = "waitress"

    def __init__(self) -> None:
        self._classes: _ServerClasses | None = None

    def prepare(self, options: ServeOptions) -> None:
        require("waitress", self.name, self.extra)
        self._classes = _define_server_classes(options.limits)

    def serve(self, sock: socket.socket, app: App, context: ServeContext) -> None:
        if self._classes is None:
            raise RuntimeError("WaitressBackend.serve() called before prepare()")
        # Left open on purpose: a signal that arrives while the runner winds
        # down must still find the pipe its handler writes to.
        stop = StopRequest()
        stop.install()
        app = guard_response(app)
        server = _make_server(self._classes, sock, app, context.options)
        loop = _Loop(server, stop, context.options)
        loop.start()
        context.ready()

        stop.wait()
        loop.raise_if_crashed()
        context.draining()
        _drain(loop, context.options.graceful_timeout)
        _close(server, loop)


def waitress_settings(sock: socket.socket, options: ServeOptions) -> dict[str, Any]:
    """The waitress adjustments for ``options`` on the inherited ``sock``."""
    limits = options.limits
    largest_head = limits.max_request_line + limits.max_header_count * (
        limits.max_header_size + 2
    )
    # waitress counts in whole seconds; round up so that an idle connection
    # is never closed before the proxy in front gives up on it.
    channel_timeout = max(1, math.ceil(options.keepalive_timeout))
    settings: dict[str, Any] = {
        "sockets": [sock],
        "channel_timeout": channel_timeout,
        # Idle channels are closed by a sweep every cleanup_interval, so an
        # idle connection lives between channel_timeout and 1.2 times that.
        "cleanup_interval": max(1, min(30, channel_timeout // 5)),
        "max_request_header_size": min(largest_head, WAITRESS_MAX_HEAD),
        # Off, so that no middleware sits on the hot path and no header is
        # silently dropped; REMOTE_ADDR is the peer whatever the client sends.
        "clear_untrusted_proxy_headers": False,
        # poll() has no FD_SETSIZE ceiling, unlike select().
        "asyncore_use_poll": True,
        # waitress stops accepting past 100 open connections, so a hundred
        # slow clients (each a channel, no thread) would shut out the rest.
        "connection_limit": MAX_CONNECTIONS,
        # ident stays "waitress": the Server header then tells an operator
        # which backend answered, and SERVER_SOFTWARE must be a string.
    }
    if options.concurrency is not None:
        settings["threads"] = options.concurrency
    return settings


@dataclass(frozen=True)
class _ServerClasses:
    """waitress's server classes, adapted; built once waitress is imported."""

    tcp: Any
    unix: Any


def _define_server_classes(limits: HeadLimits) -> _ServerClasses:
    from waitress.channel import HTTPChannel
    from waitress.server import TcpWSGIServer, UnixWSGIServer
    from waitress.task import WSGITask

    limited_parser = define_parser_class(limits)

    class DrainAwareTask(WSGITask):  # type: ignore[misc]
        """Closes the connection after this response once the worker drains."""

        def build_response_header(self) -> bytes:
            if self.channel.server.draining:
                self.set_close_on_finish()
            head: bytes = super().build_response_header()
            return head

    class UnixTask(DrainAwareTask):
        """Leaves REMOTE_PORT out: a UNIX-socket peer has no port."""

        def get_environment(self) -> dict[str, Any]:
            environ: dict[str, Any] = super().get_environment()
            environ.pop("REMOTE_PORT", None)
            return environ

    class TcpChannel(HTTPChannel):  # type: ignore[misc]
        task_class = DrainAwareTask
        parser_class = limited_parser

    class UnixChannel(HTTPChannel):  # type: ignore[misc]
        task_class = UnixTask
        parser_class = limited_parser

    class SharedListener:
        """What differs when the listening socket is shared with siblings."""

        draining = False

        def accept_connections(self) -> None:
            # waitress calls listen() here, which would replace the backlog
            # that the supervisor chose for every worker on this socket.
            self.accepting = True

    class TcpServer(SharedListener, TcpWSGIServer):  # type: ignore[misc]
        channel_class = TcpChannel

    class UnixServer(SharedListener, UnixWSGIServer):  # type: ignore[misc]
        channel_class = UnixChannel

        def fix_addr(self, addr: object) -> tuple[str, None]:
            return ("", None)

    return _ServerClasses(tcp=TcpServer, unix=UnixServer)


def _make_server(
    classes: _ServerClasses, sock: socket.socket, app: App, options: ServeOptions
) -> Any:
    """One waitress server on ``sock``, as ``create_server`` builds it.

    ``create_server(sockets=[sock])`` would build waitress's own classes; we
    build ours the same way: a pre-bound socket is adopted without bind(),
    and closing it never calls shutdown() nor unlinks a UNIX path.
    """
    from waitress.adjustments import Adjustments
    from waitress.task import ThreadedTaskDispatcher

    adj = Adjustments(**waitress_settings(sock, options))
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    unix = sock.family == socket.AF_UNIX
    server_class = classes.unix if unix else classes.tcp
    server = server_class(
        app,
        map={},
        _sock=sock,
        dispatcher=dispatcher,
        adj=adj,
        bind_socket=False,
        sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()),
    )
    # Set once here rather than per request: waitress would put its
    # placeholder name and, on a UNIX socket, the path into the environ.
    if unix:
        server.server_name, server.effective_port = "localhost", "80"
    else:
        server.server_name = server.effective_host
    log.debug(
        "waitress: threads=%d channel_timeout=%ds max_request_header_size=%d pid=%d",
        adj.threads,
        adj.channel_timeout,
        adj.max_request_header_size,
        os.getpid(),
    )
    return server


class _Loop:
    """waitress's socket loop, run in a thread until a drain empties it.

    The main thread waits for it through ``stop`` rather than a thread
    join: the kernel may hand a signal to any thread, and only a wait on
    the signal's wake-up pipe is sure to see it (a second SIGINT during the
    drain must exit at once).
    """

    def __init__(self, server: Any, stop: StopRequest, options: ServeOptions) -> None:
        self.server = server
        self._stop = stop
        self._header_timeout = options.header_timeout
        self._io_timeout = options.io_timeout
        self._next_check = 0.0
        self._ended = False
        self._cut = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name="waitress-loop", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def call(self, step: Callable[[], None]) -> None:
        """Run ``step`` in the loop thread at its next wake-up."""
        self.server.trigger.pull_trigger(step)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; return whether the loop ended."""
        return self._stop.wait_until(lambda: self._ended, max(0.0, timeout))

    @property
    def was_cut(self) -> bool:
        return self._cut

    def raise_if_crashed(self) -> None:
        if self._failure is not None:
            raise RuntimeError("waitress's socket loop failed") from self._failure

    def _run(self) -> None:
        from waitress import wasyncore

        timeout = self.server.adj.asyncore_loop_timeout
        try:
            while not self._finished():
                wasyncore.poll2(timeout, self.server._map)
                if self.server.draining:
                    self.close_idle()
                self.close_stalled()
        except BaseException as exc:
            self._failure = exc
            self._stop.trigger()  # wakes the main thread, which re-raises
        finally:
            self._ended = True
            self._stop.wake()

    def _finished(self) -> bool:
        draining = self.server.draining or self._cut
        return bool(draining and not self.server.active_channels)

    # -- steps run in the loop thread ------------------------------------
    def begin_drain(self) -> None:
        """Stop accepting at once, then let in-flight channels finish."""
        from waitress import wasyncore

        self.server.draining = True
        # The dispatcher's own close(): it closes only this listener, where
        # the server's close() would also close the trigger we still need.
        wasyncore.dispatcher.close(self.server)
        self.close_idle()

    def close_idle(self) -> None:
        for channel in list(self.server.active_channels.values()):
            if _is_idle(channel):
                channel.handle_close()

    def close_stalled(self) -> None:
        """Close the channels whose head is late or whose transfer stalled
        (see the module's doc); after a loop pass, every HEAD_CHECK at most.
        """
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + HEAD_CHECK
        late_head = now - self._header_timeout
        # waitress stamps last_activity with time.time().
        stalled = time.time() - self._io_timeout
        for channel in list(self.server.active_channels.values()):
            request = channel.request
            if request is not None and not request.headers_finished:
                if request.started < late_head:
                    log.info("closed: a head late pid=%d", os.getpid())
                    channel.handle_close()
            elif channel.last_activity < stalled and (
                request is not None or channel.total_outbufs_len
            ):
                log.info("closed: a transfer stalled pid=%d", os.getpid())
                channel.handle_close()

    def cut(self) -> None:
        """Close every channel; past the graceful timeout."""
        channels = list(self.server.active_channels.values())
        busy = sum(1 for channel in channels if not _is_idle(channel))
        log.warning(
            "cut: %d connection(s) still busy after the graceful timeout pid=%d",
            busy,
            os.getpid(),
        )
        self._cut = True
        for channel in channels:
            channel.handle_close()


def _is_idle(channel: Any) -> bool:
    """Whether a channel waits for a request that has not begun to arrive.

    Closing one races with a request the client may be sending right now:
    the client sees the connection close, as when any server ends an idle
    keep-alive connection, and retries on a new one.
    """
    return not (channel.requests or channel.total_outbufs_len or channel.request)


def _drain(loop: _Loop, graceful_timeout: float) -> None:
    loop.call(loop.begin_drain)
    if loop.join(graceful_timeout):
        return
    loop.call(loop.cut)
    if not loop.join(CUT_JOIN_TIMEOUT):
        log.error(
            "waitress's loop did not stop %gs after the cut pid=%d",
            CUT_JOIN_TIMEOUT,
            os.getpid(),
        )


def _close(server: Any, loop: _Loop) -> None:
    """Release what the loop left: the trigger, and the idle task threads."""
    from waitress import wasyncore

    loop.raise_if_crashed()
    wasyncore.close_all(server._map)
    # After a drain the task threads are idle and leave at once. After a cut
    # those still inside the app are left to end with the process (they are
    # daemons): waiting for them is what the graceful timeout was for.
    wait = 0.0 if loop.was_cut else IDLE_THREADS_TIMEOUT
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=wait)
