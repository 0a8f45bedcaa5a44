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
  or too many). A request line that is not ``METHOD target HTTP/1.x`` gets
  400 with a status line, where http.server would answer in HTTP/0.9.
- The head is parsed strictly (``http11_strict``: 400 for two
  Content-Lengths, a Content-Length beside a Transfer-Encoding, a bare CR
  or LF...), and a chunked body is read as strictly (400, not 500, for a
  malformed one), so that werkzeug agrees with a proxy in front on where a
  request ends even though it closes the connection after each one.
- An HTTP/1.0 request is answered in HTTP/1.0, so that a response without
  Content-Length ends with the connection instead of being chunked.
- Timeouts: http.server's is one per read, so a head trickled a byte at a
  time would hold its thread for ever; a thread of ours shuts down a
  connection whose head is not in ``--header-timeout`` after it opened
  (``werkzeug_connections.HeadWatch``). Past the head, each read and write
  has ``--io-timeout``.

Theory of operation. ``serve_forever`` runs in a thread; the main thread
blocks in ``StopRequest.wait()``. On a stop it ends the accept loop, closes
both listening descriptors of this process (the runner's and werkzeug's
duplicate of it), wakes the connections still waiting for their request,
and waits for the others up to the graceful timeout.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from juggler.backends.base import App, Backend, ServeContext, ServeOptions, require
from juggler.backends.head import guard_response
from juggler.backends.http11_strict import (
    HttpError,
    chunked_input,
    field_block,
    read_head,
    request_line_refusal,
)
from juggler.backends.signals import StopRequest
from juggler.backends.werkzeug_connections import Connections, HeadWatch

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

        app = guard_response(bad_body_is_400(app))
        server: Any = self._make_server(sock, app)
        accept_thread = threading.Thread(
            target=server.serve_forever, name="werkzeug-accept", daemon=True
        )
        accept_thread.start()
        watch = HeadWatch(server.connections)
        context.ready()

        stop.wait()
        watch.stop()
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


def _define_server_class(options: ServeOptions) -> ServerFactory:
    from email.parser import Parser
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
            error = request_line_refusal(self.raw_requestline, limits)
            if error is not None:
                # Refused here, not by http.server, which would answer a
                # line it cannot read in HTTP/0.9: a page, no status line.
                self.requestline = self.command = ""
                self.request_version = "HTTP/1.1"
                self.send_error(error.status, None, error.detail)
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
                request = read_head(rfile, self.raw_requestline, limits)
            except HttpError as exc:
                self.send_error(exc.status, None, exc.detail)
                return False
            # The fields as the strict parse read them (see http11_strict).
            self.headers = header_parser.parsestr(field_block(request))
            self.server.connections.head_read(self.connection)
            # From here each read of the body and write of the response has
            # io_timeout to make progress (the keep-alive one was for the head).
            self.connection.settimeout(options.io_timeout)
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
            if environ.get("wsgi.input_terminated"):
                # A chunked body: werkzeug's reader takes "0x5" for a size.
                environ["wsgi.input"] = chunked_input(self.rfile, limits)
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
            self.connections = Connections(options.header_timeout)

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


def bad_body_is_400(app: App) -> App:
    """Answer 400, not werkzeug's 500, when the app meets a malformed body.

    The strict chunked reader raises ``HttpError`` in the app that reads a
    malformed body; an app that lets it through gets its status answered,
    as the wsgiref backend does. The connection closes after it anyway.
    """

    def app_with_body_errors(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Any:
        try:
            return app(environ, start_response)
        except HttpError as exc:
            log.debug("refused a request body: %s pid=%d", exc, os.getpid())
            status = f"{exc.status} {HTTPStatus(exc.status).phrase}"
            body = f"{status}\n".encode()
            headers = [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ]
            start_response(status, headers, sys.exc_info())
            return [body]

    return app_with_body_errors


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
