"""The WSGI request cycle on one HTTP/1.1 connection, in a worker thread.

``WsgiHandler.serve`` reads a request head, builds the environ, runs the app
and sends its ``Response``, and does it again for each request the client
has already sent; it returns whether the connection may wait for another
one. A ``Connection`` is what outlives one request: the socket, its receive
buffer and the part of the environ every request on it shares.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from typing import Any, Literal
from urllib.parse import unquote

from juggler.backends.base import App, ServeOptions
from juggler.backends.http11 import (
    RECV_SIZE,
    ClientDisconnected,
    HttpError,
    Reader,
    Request,
    error_response,
    head_ready,
    parse_head,
)
from juggler.backends.http11_body import Body, body_for
from juggler.backends.wsgi11_response import DRAIN_LIMIT, FileWrapper, Response

# The backend's logger: these lines belong to the wsgiref backend.
log = logging.getLogger("juggler.backends.wsgiref")

Arrival = Literal["ready", "partial", "nothing", "gone"]

# Closing a socket with unread input makes the kernel send a reset that can
# destroy a response the client has not read yet. So a connection closed in
# that state is half-closed and its input read and discarded for a moment.
LINGER_TIMEOUT = 2.0
LINGER_BYTES = 256 * 1024


class Connection:
    """A client connection, and what outlives one request on it."""

    __slots__ = ("armed", "deadline", "environ", "fd", "linger", "reader", "sock")

    def __init__(
        self, sock: socket.socket, reader: Reader, environ: dict[str, Any]
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.reader = reader
        self.environ = environ  # the part of the environ every request shares
        self.armed = False  # whether the poller's epoll set holds it
        self.deadline = 0.0  # when it is closed if still idle
        self.linger = False  # whether unread input may be left at close


def close_connection(conn: Connection) -> None:
    """Close a connection, lingering first if input may still be unread."""
    sock = conn.sock
    if not conn.linger:
        sock.close()
        return
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_TIMEOUT
        left = LINGER_BYTES
        while left > 0 and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            data = sock.recv(RECV_SIZE)
            if not data:
                break
            left -= len(data)
    except OSError:
        pass
    finally:
        sock.close()


class WsgiHandler:
    """Runs the requests of one connection through the app, in a worker."""

    def __init__(
        self, app: App, options: ServeOptions, listener: socket.socket
    ) -> None:
        self._app = app
        self._limits = options.limits
        self._header_timeout = options.header_timeout
        # A limit on each recv or send that makes no progress: a body that
        # stops arriving, a client that stops reading its response.
        self._io_timeout = options.io_timeout
        self._unix = listener.family == socket.AF_UNIX
        self._base = _base_environ(listener)
        self._pid = os.getpid()
        # Whether every response closes its connection: keep-alive is off,
        # or a stop has begun.
        self.closing = options.keepalive_timeout <= 0

    def connection(self, sock: socket.socket, address: Any) -> Connection | None:
        """Set up a socket just accepted; None if it failed (and is closed).

        Takes, without waiting, whatever the client sent along with the
        handshake: the poller serves a connection with data in its buffer at
        once and parks a silent one.
        """
        try:
            first = sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            first = b""
        except OSError:
            sock.close()
            return None
        if not self._unix:
            # Responses are written whole; Nagle would only delay them.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self._io_timeout)
        reader = Reader(sock, self._io_timeout)
        reader.buf += first

        environ = self._base.copy()
        if self._unix:
            environ["REMOTE_ADDR"] = ""
        else:
            environ["REMOTE_ADDR"] = address[0]
            environ["REMOTE_PORT"] = str(address[1])
        return Connection(sock, reader, environ)

    def ready(self, conn: Connection) -> bool:
        """Whether a worker can serve ``conn`` without waiting for its head."""
        return head_ready(conn.reader.buf, self._limits)

    def read_arrived(self, conn: Connection) -> Arrival:
        """Take what a waiting connection has sent, without blocking.

        For the poller, which saw it readable: the connection's head is
        in (``ready``), or not yet (``partial``), nothing came after all
        (``nothing``), or the client is gone (``gone``).
        """
        try:
            # The descriptor is non-blocking under the socket's timeout;
            # recv() would first wait for input with that timeout.
            data = os.read(conn.fd, RECV_SIZE)
        except BlockingIOError:
            return "partial" if conn.reader.buf else "nothing"
        except OSError:
            return "gone"
        if not data:
            return "gone"
        conn.reader.buf += data
        return "ready" if head_ready(conn.reader.buf, self._limits) else "partial"

    def serve(self, conn: Connection) -> bool:
        """Serve requests until the connection waits (True) or is done.

        It waits, in the poller and not in this thread, for a request not
        begun or only begun: the rest of a head may come late, or never.
        """
        while self._serve_one(conn):
            if not head_ready(conn.reader.buf, self._limits):
                return True
        return False

    def _serve_one(self, conn: Connection) -> bool:
        try:
            deadline = time.monotonic() + self._header_timeout
            head = conn.reader.read_head(self._limits, deadline)
            if head is None:
                return False
            request = parse_head(head, self._limits)
        except HttpError as exc:
            self._refuse(conn, exc)
            return False
        except OSError as exc:
            log.debug("connection dropped before a request: %s pid=%d", exc, self._pid)
            return False
        return self._handle(conn, request)

    def _refuse(self, conn: Connection, exc: HttpError) -> None:
        log.debug("refused a request: %s pid=%d", exc, self._pid)
        conn.linger = True
        with contextlib.suppress(OSError):
            conn.sock.sendall(error_response(exc.status))

    def _handle(self, conn: Connection, request: Request) -> bool:
        body = body_for(request, conn.reader, self._limits)
        response = Response(conn.sock, request, body, self)
        if request.expect_continue and not body.finished:
            body.on_first_read = response.send_continue
        environ = self._environ(conn, request, body)
        try:
            self._run_app(environ, response)
        except ClientDisconnected as exc:
            log.debug("client gone: %s pid=%d", exc, self._pid)
            return False
        except HttpError as exc:  # wsgi.input met a malformed body
            if not response.started:
                self._refuse(conn, exc)
            conn.linger = True
            return False
        except Exception as exc:
            self._app_failed(request, response, exc)
            conn.linger = True
            return False
        return self._settle(conn, response)

    def _run_app(self, environ: dict[str, Any], response: Response) -> None:
        result = self._app(environ, response.start_response)
        try:
            response.send(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _app_failed(self, request: Request, response: Response, exc: Exception) -> None:
        log.error(
            "app raised %s on %s %r pid=%d",
            type(exc).__name__,
            request.method,
            request.path,
            self._pid,
            exc_info=exc,
        )
        if not response.started:
            with contextlib.suppress(ClientDisconnected):
                response.send_error(500)

    def _settle(self, conn: Connection, response: Response) -> bool:
        """Whether the connection may carry another request."""
        body = response.body
        if response.keep_alive and body.drain(DRAIN_LIMIT):
            return True
        conn.linger = not body.finished or bool(conn.reader.buf)
        return False

    def _environ(
        self, conn: Connection, request: Request, body: Body
    ) -> dict[str, Any]:
        environ = conn.environ.copy()
        path = request.path
        environ["REQUEST_METHOD"] = request.method
        environ["PATH_INFO"] = unquote(path, "latin-1") if "%" in path else path
        environ["QUERY_STRING"] = request.query
        environ["RAW_URI"] = environ["REQUEST_URI"] = request.target
        environ["SERVER_PROTOCOL"] = request.version
        environ["wsgi.input"] = body
        for name, value in request.headers:
            key = _KEYS.get(name) or _environ_key(name)
            if not key:
                continue
            text = value.decode("latin-1")
            old = environ.get(key)
            environ[key] = text if old is None else f"{old}, {text}"
        return environ


def _base_environ(listener: socket.socket) -> dict[str, Any]:
    if listener.family == socket.AF_UNIX:
        name, port = "localhost", "80"
    else:
        host, number = listener.getsockname()[:2]
        name, port = host, str(number)
    return {
        "SCRIPT_NAME": "",
        "SERVER_NAME": name,
        "SERVER_PORT": port,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }


# Header name -> environ key. Clients choose the names, so it is bounded.
_KEYS: dict[bytes, str] = {}


def _environ_key(name: bytes) -> str:
    if b"_" in name:
        # "X_Forwarded_For" would land on the key of "X-Forwarded-For" and
        # could shadow what a proxy set; such names are dropped ("").
        key = ""
    else:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
    if len(_KEYS) < 1024:
        _KEYS[name] = key
    return key
