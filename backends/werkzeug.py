"""The werkzeug backend: werkzeug's development server, one thread a connection.

It is for development (``runner serve --backend werkzeug --reload``): the
runner says so in a warning at start. What it does not do, and why:

- No keep-alive. werkzeug (since 2.1.2) answers every response with
  ``Connection: close``, because Python's ``http.server`` does not skip an
  unread request body before it reads the next request line. Enabling it
  would mean replacing werkzeug's ``run_wsgi`` with one that frames each
  body: a rewrite of the handler, no longer werkzeug's dev server.
- No thread limit: each connection gets a thread. ``--threads`` is ignored
  (bounding it would stall the accept loop that ``shutdown()`` waits for).
- Head limits: ``options.limits`` are checked on the request line (414),
  after ``http.server`` has read it with its own bound (64 KiB), and on
  the header fields, which the handler reads itself (431 for one too long
  or too many, 400 for a line without a colon).
- An HTTP/1.0 request is answered in HTTP/1.0, so that a response without
  Content-Length ends with the connection instead of being chunked.

Theory of operation. ``serve_forever`` runs in a thread; the main thread
blocks in ``StopRequest.wait()``. On a stop it ends the accept loop, closes
both listening descriptors of this process (the runner's and werkzeug's
duplicate of it), wakes the connections still waiting for their request,
and waits for the others up to the graceful timeout.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from juggler.backends.base import App, Backend, ServeContext, ServeOptions, require
from juggler.backends.head import head_without_body
from juggler.backends.http11_limits import HttpError, read_field_lines
from juggler.backends.signals import StopRequest

if TYPE_CHECKING:
    from werkzeug.serving import ThreadedWSGIServer

log = logging.getLogger("juggler.backends.werkzeug")

ServerFactory = Callable[[socket.socket, App], "ThreadedWSGIServer"]

# The accept loop notices shutdown() within its poll interval; the thread
# then only closes werkzeug's descriptor. This bounds the wait for it.
ACCEPT_THREAD_JOIN_TIMEOUT = 5.0


class WerkzeugBackend(Backend):
    """Serves WSGI apps with werkzeug's threaded development server."""

    name = "werkzeug"
    interfaces = frozenset({"wsgi"})
    package = "werkzeug"
    extra = "werkzeug"

    def __init__(self) -> None:
        self._make_server: ServerFactory | None = None

    def prepare(self, options: ServeOptions) -> None:
        require("werkzeug", self.name, self.extra)
        self._make_server = _define_server_class(options)

    def serve(self, sock: socket.socket, app: App, context: ServeContext) -> None:
        if self._make_server is None:
            raise RuntimeError("WerkzeugBackend.serve() called before prepare()")
        _warn_development(context.options)
        _route_werkzeug_logger()
        # Left open on purpose: a signal that arrives while the runner winds
        # down must still find the pipe its handler writes to.
        stop = StopRequest()
        stop.install()

        server: Any = self._make_server(sock, head_without_body(app))
        accept_thread = threading.Thread(
            target=server.serve_forever, name="werkzeug-accept", daemon=True
        )
        accept_thread.start()
        context.ready()

        stop.wait()
        context.draining()
        deadline = time.monotonic() + context.options.graceful_timeout
        _stop_accepting(server, accept_thread, sock)
        _drain(server.connections, deadline)


def _warn_development(options: ServeOptions) -> None:
    log.warning(
        "werkzeug is a development server: no keep-alive, a thread per "
        "connection; use waitress, gevent or meinheld in production pid=%d",
        os.getpid(),
    )
    if options.concurrency is not None:
        log.warning(
            "--threads %d is ignored: werkzeug starts a thread per connection pid=%d",
            options.concurrency,
            os.getpid(),
        )


def _route_werkzeug_logger() -> None:
    """Let the runner's --log-level decide what werkzeug's logger shows.

    On its first message werkzeug gives its logger the level INFO unless one
    is set; we set the root's, so that --log-level warning hides its info
    lines too. It adds no handler of its own while the root has one.
    """
    logging.getLogger("werkzeug").setLevel(logging.getLogger().getEffectiveLevel())


class Connections:
    """The client connections of this worker, and which are mid-request."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._open: set[socket.socket] = set()
        self._waiting: set[socket.socket] = set()

    def opened(self, conn: socket.socket) -> None:
        with self._changed:
            self._open.add(conn)
            self._waiting.add(conn)

    def started(self, conn: socket.socket) -> None:
        """The request line of ``conn`` has arrived."""
        with self._changed:
            self._waiting.discard(conn)

    def closed(self, conn: socket.socket) -> None:
        with self._changed:
            self._open.discard(conn)
            self._waiting.discard(conn)
            self._changed.notify_all()

    def wake_waiting(self) -> None:
        """End the connections that have not begun a request.

        Shutting down the reading side makes their thread read end-of-file
        and leave. A request the client is sending at this very moment is
        lost with it, as when any server ends an idle connection.

        Known shortcoming: a connection accepted just before the accept loop
        ended, whose thread registers after this call, is not woken; if its
        client sends nothing it holds the drain until the idle timeout or
        the graceful timeout. Closing that gap would take a draining flag
        checked in ``opened()`` and a wake-up there for idle newcomers.
        """
        with self._changed:
            for conn in self._waiting:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)

    def wait_closed(self, timeout: float) -> int:
        """Wait up to ``timeout`` for every connection to end; return how
        many are left."""
        with self._changed:
            self._changed.wait_for(lambda: not self._open, max(0.0, timeout))
            return len(self._open)

    def cut(self) -> None:
        """Close every connection left: the clients see it end now."""
        with self._changed:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


def _define_server_class(options: ServeOptions) -> ServerFactory:
    from email.parser import Parser
    from http import HTTPStatus
    from http.client import HTTPMessage

    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    limits = options.limits
    # What http.client.parse_headers does once it has read the lines.
    header_parser = Parser(_class=HTTPMessage)

    class Handler(WSGIRequestHandler):
        """werkzeug's handler with our environ, limits and logging."""

        server: Server
        protocol_version = "HTTP/1.1"  # chunked responses; still one a connection
        # A client that sends nothing, or stops half-way, is dropped after
        # the idle timeout instead of holding a thread forever.
        timeout = options.keepalive_timeout

        def setup(self) -> None:
            super().setup()
            self.server.connections.opened(self.connection)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                self.server.connections.closed(self.connection)

        def parse_request(self) -> bool:
            self.server.connections.started(self.connection)
            if len(self.raw_requestline.rstrip(b"\r\n")) > limits.max_request_line:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return False
            # http.server would read the fields under http.client's bounds
            # (100 lines, the empty one included) and hand a line without a
            # colon to the email parser, which takes it for the end of the
            # head. It parses the request line alone; the fields are ours.
            rfile, self.rfile = self.rfile, io.BytesIO(b"\r\n")
            try:
                if not super().parse_request():
                    return False
            finally:
                self.rfile = rfile
            try:
                fields = read_field_lines(rfile, limits)
            except HttpError as exc:
                self.send_error(exc.status, None, exc.detail)
                return False
            self.headers = header_parser.parsestr(fields.decode("latin-1"))
            return self._after_fields()

        def _after_fields(self) -> bool:
            """What http.server does once it has the fields, and HTTP/1.0."""
            connection = self.headers.get("Connection", "").lower()
            if connection == "close":
                self.close_connection = True
            elif connection == "keep-alive":
                self.close_connection = False
            if self.request_version < "HTTP/1.1":
                # werkzeug chunks a response without Content-Length when it
                # speaks HTTP/1.1; an HTTP/1.0 client cannot read chunks, so
                # it is answered in HTTP/1.0: the body ends with the close.
                self.protocol_version = "HTTP/1.0"
                return True
            expect = self.headers.get("Expect", "").lower()
            return expect != "100-continue" or bool(self.handle_expect_100())

        def make_environ(self) -> dict[str, Any]:
            environ = super().make_environ()
            if self.server.unix:
                environ.pop("REMOTE_PORT", None)
                environ["REMOTE_ADDR"] = ""
                environ["SERVER_NAME"] = "localhost"
                environ["SERVER_PORT"] = "80"
            else:
                # werkzeug gives an int; CGI variables are strings.
                environ["REMOTE_PORT"] = str(environ["REMOTE_PORT"])
            return environ

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            """No line per request: ``--access-log`` is the runner's."""

        def log_error(self, format: str, *args: Any) -> None:
            # A client's bad request or idle timeout, not a server error.
            if log.isEnabledFor(logging.DEBUG):
                message = format % args if args else format
                log.debug("werkzeug: %s pid=%d", message, os.getpid())

    class Server(ThreadedWSGIServer):
        """werkzeug's threaded server on an adopted socket."""

        # Our Connections is the one record of the threads; without this,
        # server_close() would also join every one of them, with no limit.
        block_on_close = False

        def __init__(self, sock: socket.socket, app: App) -> None:
            # werkzeug adopts a duplicate of the descriptor (socket.fromfd);
            # it never binds, listens on or unlinks an adopted socket.
            host, port = werkzeug_address(sock)
            super().__init__(host, port, app, Handler, fd=sock.fileno())
            self.unix = sock.family == socket.AF_UNIX
            self.connections = Connections()

        def handle_error(self, request: Any, client_address: Any) -> None:
            # socketserver would print this to stderr, past our logging. It
            # is called inside the except clause, so exc_info is the error.
            log.error(
                "werkzeug: error on a connection from %r pid=%d",
                client_address,
                os.getpid(),
                exc_info=sys.exc_info(),
            )

    return Server


def werkzeug_address(sock: socket.socket) -> tuple[str, int]:
    """The host and port to give werkzeug for an adopted ``sock``.

    werkzeug guesses the family of an adopted descriptor from the host
    string (``unix://`` for UNIX, a colon for IPv6) and passes its guess to
    ``socket.fromfd``, so the host must name the socket's real address.
    """
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        # An unnamed or abstract socket has no path; werkzeug only shows it.
        path = address if isinstance(address, str) else ""
        return f"unix://{path}", 0
    return address[0], address[1]


def _stop_accepting(
    server: Any, accept_thread: threading.Thread, sock: socket.socket
) -> None:
    server.shutdown()
    accept_thread.join(ACCEPT_THREAD_JOIN_TIMEOUT)
    server.server_close()  # werkzeug's duplicate; idempotent
    sock.close()  # the runner's descriptor; never shutdown(): siblings share it


def _drain(connections: Connections, deadline: float) -> None:
    connections.wake_waiting()
    left = connections.wait_closed(deadline - time.monotonic())
    if left:
        log.warning(
            "cut: %d connection(s) still busy after the graceful timeout pid=%d",
            left,
            os.getpid(),
        )
        # Their threads are daemons, still inside the app: they end with
        # the process, which the runner is about to leave.
        connections.cut()
