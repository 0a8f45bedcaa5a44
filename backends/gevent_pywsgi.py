"""gevent's pywsgi, adapted: the handler and server classes of the backend.

They derive from gevent's classes, so they are built on first use
(``server_class_for_gevent``): the backend module must import without
gevent installed (``runner backends`` lists it). What they change is on the
path pywsgi takes anyway, at no cost per request beyond it: the head read
strictly with its limits and its deadline, the keep-alive and I/O
timeouts, the environ conventions, the drain's view of idle connections
and the app's errors in our log.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from juggler.backends.base import App, HeadLimits, ServeOptions
from juggler.backends.head import check_response_head
from juggler.backends.http11_strict import HttpError, field_block, read_head

log = logging.getLogger("juggler.backends.gevent")


class HeadRefused(ValueError):
    """A request head refused with a status other than 400 (414, 431, 501).

    pywsgi answers a ValueError with 400; this one with its own status, and
    closes the connection.
    """

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.response = (
            f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ).encode("latin-1")


def read_head_fields(fp: Any, request_line: bytes, limits: HeadLimits) -> str:
    """Read and check the rest of the head; return its fields, normalised.

    The head is parsed strictly (``http11_strict``): a head that a proxy
    could frame otherwise never reaches pywsgi's own, laxer, parsing.
    """
    try:
        return field_block(read_head(fp, request_line, limits))
    except HttpError as exc:
        if exc.status == 400:
            raise ValueError(exc.detail) from None
        phrase = HTTPStatus(exc.status).phrase
        raise HeadRefused(f"{exc.status} {phrase}", exc.detail) from None


def _has_header(headers: Iterable[tuple[str, str]], name: str) -> bool:
    return any(key.lower() == name for key, _ in headers)


@functools.cache
def server_class_for_gevent() -> type[Any]:
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
        raw_requestline = b""
        head_timer: Any = None
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
            # The keep-alive timeout covers the wait for a request, each
            # read of its head too; get_environ sets io_timeout for the rest.
            self.socket.settimeout(self.server.keepalive_timeout)
            self.idle = self.requests_seen > 1
            try:
                if not self.rfile.peek(1):
                    return ""  # closed while idle
            finally:
                self.idle = False
            # The head has begun: it must end within header_timeout, however
            # slowly it comes (HeadRefused is raised in this greenlet then).
            self.head_timer = gevent.Timeout.start_new(
                self.server.header_timeout, HeadRefused("408 Request Timeout", "late")
            )
            limit = self.server.limits.max_request_line
            line: bytes = self.rfile.readline(limit + 3)
            self.raw_requestline = line
            return line.decode("latin-1")

        def handle_one_request(self) -> Any:
            try:
                return super().handle_one_request()
            except HeadRefused as exc:  # late, while reading the request line
                return self._handle_client_error(exc)
            finally:
                self._stop_head_timer()

        def _stop_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.close()
                self.head_timer = None

        def read_request(self, raw_requestline: str) -> Any:
            limit = self.server.limits.max_request_line
            if len(raw_requestline.rstrip("\r\n")) > limit:
                raise HeadRefused(
                    "414 Request-URI Too Long",
                    f"request line longer than {limit} bytes",
                )
            return super().read_request(raw_requestline)

        def MessageClass(self, fp: Any, *args: Any) -> Any:
            limits = self.server.limits
            fields = read_head_fields(fp, self.raw_requestline, limits)
            return header_parser.parsestr(fields)

        def _handle_client_error(self, ex: Exception) -> Any:
            if isinstance(ex, HeadRefused):
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
            self._stop_head_timer()
            # From here each read of the body and each write of the response
            # has io_timeout to make progress, or the connection is dropped.
            self.socket.settimeout(self.server.io_timeout)
            environ: dict[str, Any] = super().get_environ()
            if not isinstance(self.client_address, tuple):
                # A UNIX peer: pywsgi leaves REMOTE_ADDR out altogether.
                environ["REMOTE_ADDR"] = ""
            return environ

        def start_response(
            self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            # pywsgi refuses CR and LF in a field, not NUL (see head.py).
            check_response_head(status, headers)
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
            self.header_timeout = options.header_timeout
            self.io_timeout = options.io_timeout
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
