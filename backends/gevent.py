"""The gevent backend: gevent.pywsgi, one greenlet per connection.

Theory of operation. ``prepare`` monkey-patches the stdlib before the app is
imported, so that the app's own sockets, locks and sleeps yield to the hub
instead of blocking the worker. ``serve`` wraps the inherited socket in a
``WSGIServer`` whose connections run in a bounded ``gevent.pool.Pool``; the
main greenlet then waits on an event that the stop signals set. gevent
delivers those signals through its own loop (``gevent.signal_handler``), so
the hub wakes at once and the handlers run as ordinary greenlets; they only
record the signal, the main greenlet acts.

On a stop, in one step with no yield in between: no more accepting, the idle
keep-alive connections are closed, and any response still to be written
carries ``Connection: close``. Then the pool gets ``graceful_timeout`` to
empty; what is left is killed.

pywsgi is adapted through a handler subclass rather than a per-request
wrapper: the environ conventions, the keep-alive timeout and the head limits
all sit on the path pywsgi takes anyway, and cost nothing extra per request.
A ``--keepalive-timeout`` of 0 or less turns keep-alive off.

Known shortcomings:

- Three of the overrides are private to pywsgi (``_handle_client_error``,
  ``_log_error``, ``_write``); a gevent release may rename them. The tests
  catch that; the fix is to follow the rename.
- The keep-alive timeout ends when the head is read: a client that stalls
  in the middle of a body holds its greenlet until the graceful stop kills
  it. A body timeout would wrap ``wsgi.input`` reads in ``gevent.Timeout``.
- A request that reaches an idle keep-alive connection just as the drain
  closes it is lost; proxies retry such requests when they are idempotent.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from juggler.backends.base import (
    App,
    Backend,
    HeadLimits,
    ServeContext,
    ServeOptions,
    require,
)
from juggler.backends.http11_limits import HttpError, read_field_lines
from juggler.backends.signals import STOP_SIGNALS, exit_now

log = logging.getLogger("juggler.backends.gevent")

# Connections one worker serves at once when --spawn is not given. gevent's
# default (a greenlet per accepted connection, unbounded) lets the worker that
# wins the accept race take every connection of a burst while its siblings
# idle, and grow without limit under load. With a bound, a full worker stops
# accepting and the kernel hands the backlog to its siblings. 1000 is
# gunicorn's worker_connections default, which proxies have long lived with.
DEFAULT_CONCURRENCY = 1000
# How long killed greenlets get to unwind after the graceful timeout.
KILL_TIMEOUT = 1.0


class GeventBackend(Backend):
    """Serves WSGI apps with gevent.pywsgi on the inherited socket."""

    name = "gevent"
    interfaces = frozenset({"wsgi"})
    package = "gevent"
    extra = "gevent"

    def prepare(self, options: ServeOptions) -> None:
        """Import gevent and, unless --no-monkey, patch the stdlib."""
        require("gevent", self.name, self.extra)
        if options.monkey_patch:
            _patch_stdlib()
        else:
            log.info("not monkey-patching (--no-monkey): pid=%d", os.getpid())

    def serve(self, sock: socket.socket, app: App, context: ServeContext) -> None:
        """Serve until SIGTERM/SIGINT, then drain within graceful_timeout."""
        options = context.options
        server = _make_server(sock, app, options)
        stop = _StopSignals()
        try:
            server.start()
            context.ready()
            signum = stop.wait()
            log.info(
                "stop requested: signal=%s pid=%d",
                signal.Signals(signum).name,
                os.getpid(),
            )
            context.draining()
            _drain(server, options.graceful_timeout)
        finally:
            stop.cancel()


def _patch_stdlib() -> None:
    """Make the stdlib cooperative before the app is imported.

    gevent warns (MonkeyPatchWarning) when ``ssl`` was imported before the
    patch, because classes taken from it earlier keep blocking. Nothing the
    runner imports up to this point pulls in ``ssl`` (tests check the log for
    the warning). ``threading`` is already imported by ``logging``; gevent
    handles that case itself and does not warn.
    """
    from gevent import monkey

    monkey.patch_all()
    log.debug("monkey-patched the stdlib: pid=%d", os.getpid())


class _StopSignals:
    """SIGTERM/SIGINT/SIGQUIT through gevent's loop, recorded for the waiter."""

    def __init__(self) -> None:
        import gevent
        from gevent.event import Event

        self.signum: int | None = None
        self._event = Event()
        self._watchers = [
            gevent.signal_handler(signum, self._on_stop, signum)
            for signum in STOP_SIGNALS
        ]
        self._watchers.append(
            gevent.signal_handler(signal.SIGQUIT, exit_now, signal.SIGQUIT)
        )

    def _on_stop(self, signum: int) -> None:
        # A second SIGINT means the operator will not wait for the drain.
        if self.signum is not None and signum == signal.SIGINT:
            exit_now(signum)
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def wait(self) -> int:
        """Block the calling greenlet until a stop signal arrives."""
        self._event.wait()
        assert self.signum is not None
        return self.signum

    def cancel(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()


def _make_server(sock: socket.socket, app: App, options: ServeOptions) -> Any:
    from gevent.pool import Pool

    # The accept watcher only says "readable"; a sibling worker may take the
    # connection first, and a blocking accept() would then freeze the whole
    # hub. The flag lives on the open file description that the siblings
    # share, which every event-loop backend needs and threaded ones tolerate.
    sock.setblocking(False)
    server_class = _server_class()
    return server_class(
        sock,
        app,
        options,
        spawn=Pool(options.concurrency or DEFAULT_CONCURRENCY),
        log=None,
        error_log=log,
        environ=_server_environ(sock),
    )


def _server_environ(sock: socket.socket) -> dict[str, str]:
    """SERVER_NAME/SERVER_PORT from the listening address, looked up once.

    Given here, they also spare pywsgi its reverse DNS lookup at start.
    """
    if sock.family == socket.AF_UNIX:
        return {"SERVER_NAME": "localhost", "SERVER_PORT": "80"}
    host, port = sock.getsockname()[:2]
    return {"SERVER_NAME": str(host), "SERVER_PORT": str(port)}


def _drain(server: Any, graceful_timeout: float) -> None:
    """gevent's ``server.stop(timeout)``, step by step, with a log line.

    ``close()`` stops the accept watcher and closes this worker's descriptor
    of the listening socket (``socket.close()``, never ``shutdown()``: the
    siblings sharing it keep accepting). gevent never re-binds it either: it
    only binds when it is given an address rather than a socket.
    """
    server.draining = True
    server.close()
    idle = server.close_idle_connections()
    in_flight = len(server.pool)
    log.info(
        "draining: closed %d idle connection(s), %d in flight pid=%d",
        idle,
        in_flight,
        os.getpid(),
    )
    if server.pool.join(timeout=graceful_timeout):
        return
    log.warning(
        "killed: %d connection(s) still busy after graceful_timeout=%gs pid=%d",
        len(server.pool),
        graceful_timeout,
        os.getpid(),
    )
    server.pool.kill(block=True, timeout=KILL_TIMEOUT)


# -- pywsgi subclasses ----------------------------------------------------------
#
# They derive from gevent's classes, so they are built on first use: this
# module must import without gevent installed (``runner backends`` lists it).


class HeadTooLarge(ValueError):
    """A request head over one of the limits; pywsgi answers and closes."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.response = (
            f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ).encode("latin-1")


def read_head_fields(fp: Any, limits: HeadLimits) -> bytes:
    """Read header lines up to the blank line, enforcing the head limits.

    pywsgi answers a ValueError with 400; a HeadTooLarge with its status.
    """
    try:
        return read_field_lines(fp, limits)
    except HttpError as exc:
        if exc.status == 400:
            raise ValueError(exc.detail) from None
        phrase = HTTPStatus(exc.status).phrase
        raise HeadTooLarge(f"{exc.status} {phrase}", exc.detail) from None


def _has_header(headers: Iterable[tuple[str, str]], name: str) -> bool:
    return any(key.lower() == name for key, _ in headers)


@functools.cache
def _server_class() -> type[Any]:
    """Build the WSGIHandler and WSGIServer subclasses (needs gevent)."""
    from email.parser import Parser

    import gevent
    from gevent import pywsgi

    # What http.client.parse_headers does once it has the lines; calling it
    # would read them again under its own limits (100 lines, counting the
    # blank one), which would refuse a head that ours admits.
    header_parser = Parser(_class=pywsgi.OldMessage)

    class Handler(pywsgi.WSGIHandler):  # type: ignore[misc]
        """pywsgi's handler with juggler's limits, timeouts and environ."""

        requests_seen = 0
        # True while waiting for a request after the first one: the state in
        # which a draining worker may close the connection.
        idle = False

        def handle(self) -> None:
            self.greenlet = gevent.getcurrent()
            self.server.connections.add(self)
            try:
                super().handle()
            finally:
                self.server.connections.discard(self)

        def read_requestline(self) -> str:
            if self.requests_seen and not self.server.keep_open:
                return ""  # pywsgi closes the connection on an empty line
            self.requests_seen += 1
            # The keep-alive timeout covers the wait for a request and the
            # reading of its head; get_environ lifts it before the app runs.
            self.socket.settimeout(self.server.keepalive_timeout)
            self.idle = self.requests_seen > 1
            try:
                limit = self.server.limits.max_request_line
                line: bytes = self.rfile.readline(limit + 3)
            finally:
                self.idle = False
            return line.decode("latin-1")

        def read_request(self, raw_requestline: str) -> Any:
            limit = self.server.limits.max_request_line
            if len(raw_requestline.rstrip("\r\n")) > limit:
                raise HeadTooLarge(
                    "414 Request-URI Too Long",
                    f"request line longer than {limit} bytes",
                )
            return super().read_request(raw_requestline)

        def MessageClass(self, fp: Any, *args: Any) -> Any:
            head = read_head_fields(fp, self.server.limits)
            return header_parser.parsestr(head.decode("latin-1"))

        def _handle_client_error(self, ex: Exception) -> Any:
            if isinstance(ex, HeadTooLarge):
                log.info(
                    "rejected: %s from %s (%s) pid=%d",
                    ex.status,
                    self.client_address or "unix peer",
                    ex,
                    os.getpid(),
                )
                return (ex.status.split()[0], ex.response)
            return super()._handle_client_error(ex)

        def get_environ(self) -> dict[str, Any]:
            self.socket.settimeout(None)
            environ: dict[str, Any] = super().get_environ()
            if not isinstance(self.client_address, tuple):
                # A UNIX peer: pywsgi leaves REMOTE_ADDR out altogether.
                environ["REMOTE_ADDR"] = ""
            return environ

        def start_response(
            self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            if not self.server.keep_open:
                if not _has_header(headers, "connection"):
                    headers = [*headers, ("Connection", "close")]
                self.close_connection = True
            return super().start_response(status, headers, exc_info)

        def finalize_headers(self) -> None:
            super().finalize_headers()
            if self.command == "HEAD":
                self.response_use_chunked = False  # no closing chunk either

        def _write(self, data: bytes) -> None:
            # WSGI leaves HEAD to the app, and pywsgi sends whatever body it
            # returns: a keep-alive client would read it as the next response.
            if self.command != "HEAD":
                super()._write(data)

        def _log_error(self, t: type[BaseException], v: Any, tb: Any) -> None:
            # pywsgi hands app errors to the hub, which prints to stderr;
            # they belong in our log, with the traceback.
            if not issubclass(t, gevent.GreenletExit):
                log.error(
                    "app error: %s %s pid=%d",
                    t.__name__,
                    self.requestline,
                    os.getpid(),
                    exc_info=(t, v, tb),
                )

    class Server(pywsgi.WSGIServer):  # type: ignore[misc]
        """pywsgi's server with the options the handlers read."""

        handler_class = Handler

        def __init__(
            self, sock: socket.socket, app: App, options: ServeOptions, **kw: Any
        ) -> None:
            super().__init__(sock, app, **kw)
            self.limits = options.limits
            timeout = options.keepalive_timeout
            self.keepalive_timeout = timeout if timeout > 0 else None
            self.keepalive = timeout > 0
            self.draining = False
            self.connections: set[Handler] = set()

        @property
        def keep_open(self) -> bool:
            """Whether a connection may stay open after this response."""
            return self.keepalive and not self.draining

        def close_idle_connections(self) -> int:
            idle = [handler for handler in self.connections if handler.idle]
            for handler in idle:
                # GreenletExit at its read; pywsgi then closes the socket.
                handler.greenlet.kill(block=False)
            return len(idle)

    return Server
