"""The meinheld backend: a C event loop (picoev) that calls the app directly.

Theory of operation. meinheld runs its whole loop in C inside
``server.run(app)``, which returns once nothing is left to serve. What this
module learned from its source (meinheld/server/server.c, 1.0.2):

- ``set_listen_socket`` takes descriptors; meinheld never binds them. It
  sets O_NONBLOCK and TCP_DEFER_ACCEPT on the listening socket, and when
  ``run`` ends it ``close()``s the descriptor; it never calls ``shutdown()``
  and only unlinks a UNIX path it bound itself. Both flags live on the
  socket the siblings share: harmless to them, but they stay.
- ``set_keepalive(n)``: 0 turns keep-alive off (and closes after each
  response, which is what halved chaussette's throughput); n > 0 turns it
  on and closes a connection idle for n whole seconds.
- ``stop(timeout)`` stops accepting and ends the loop once no connection is
  left, or after ``timeout`` whole seconds (1 when given 0); then ``run``
  returns and the connections still open are dropped.
- ``run`` installs C handlers for SIGINT/SIGTERM that call ``stop(0)``:
  a one-second drain that no option changes. So once the loop runs, a
  callback scheduled for its first pass puts the runner's own handlers back
  (they only record), and a watchdog that meinheld calls about once a
  second starts meinheld's drain with ``graceful_timeout``: meinheld stops
  accepting up to a second after the signal, or once the app returns.
- The app runs in meinheld's only thread, so while a request is in the app
  neither the watchdog nor ``stop``'s timer can run. The graceful deadline
  is kept by a thread of ours instead, which hears the signal whatever the
  main thread is doing, sends STOPPING=1 at once and, if the loop has not
  ended in time, cuts the requests still in the app by exiting 0, as
  waitress and gevent do when their graceful timeout cuts requests (see
  meinheld_stop.py).

Known shortcomings, all in meinheld's C code:

- Draining waits for idle keep-alive connections (a proxy's pool of them)
  to time out, or for ``graceful_timeout``, whichever comes first: meinheld
  has no call that closes idle connections. Fixing it means a
  ``kill_server`` in C that also closes the clients waiting for a request.
- Head limits are meinheld's own and cannot be set: a request target over
  8 KiB, more than 128 header fields, a field name or value over 8 KiB, or a
  head over 80 KiB get 400 (not 414 or 431), so ``HeadLimits`` is not
  applied. Changing them means editing meinheld/server/request.h and
  rebuilding.
- Its parser is lax where the other backends refuse: it takes bare LF line
  ends, folded lines, a NUL in a value and a chunk size followed by junk
  (``5 x``), and joins a ``X_Name`` field with its ``X-Name`` twin in the
  environ (``HTTP_X_NAME = "a, b"``). The environ cannot tell any of these
  apart afterwards. A proxy that writes each request anew, as nginx does,
  never passes them on; a lax proxy in front could frame such a request
  otherwise and smuggle one behind it. What the environ does show is
  refused here: a Transfer-Encoding other than one final ``chunked`` gets
  400, and the connection is shut down after it (see ``_Connections``).
- No deadline for a head: meinheld's read timeout starts again with each
  byte, so ``--header-timeout`` is not applied and a head trickled a byte
  at a time holds its connection (not the worker: the loop serves others).
  A stalled body is timed out by meinheld's own read timeout, its
  keep-alive one, not ``--io-timeout``.
- A client that reads none of a large response holds the whole worker for
  ``--io-timeout``: writes are blocking (below), and past that meinheld
  parks the write and keeps the connection for good.
- meinheld's greenlet calls from C are unsafe with greenlet 3, the only
  greenlet that builds on Python 3.11: ``server.trampoline`` (under its
  cooperative sockets) raises TypeError, so the stdlib is never patched
  (see ``prepare``); a write that has to wait for the socket breaks the
  connection and, repeated, crashes the worker, so writes are made blocking
  (see ``environ_fixer``). A real fix is a meinheld rebuilt against
  greenlet 3's C API.

And one in how the runner works around them: a stop cut at the graceful
timeout ends the process from the watch thread with ``os._exit``, so the
``--post-hook`` does not run and the runner's "stopped" line is not
written. A clean way out would need meinheld to return from ``run`` while
the app still holds its thread, which its C loop cannot do.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from juggler.backends.base import (
    App,
    Backend,
    BackendUnavailable,
    ServeContext,
    ServeOptions,
    require,
)
from juggler.backends.head import guard_response
from juggler.backends.meinheld_stop import MeinheldLoop, whole_seconds

log = logging.getLogger("juggler.backends.meinheld")

PIN_HINT = (
    "then install meinheld itself with: pip install --no-deps meinheld==1.0.2 "
    "(its greenlet<0.5 pin does not build on Python 3.11+)"
)
# The largest body size meinheld's setter takes (a C int). Its default, 16
# MiB, would answer 413 where every other backend passes the body on; bodies
# over 500 KiB are spooled to a temporary file, not held in memory.
MAX_CONTENT_LENGTH = 2**31 - 1
# Descriptors the process holds besides its connections (logs, the app's own).
FD_HEADROOM = 128

StartResponse = Callable[..., Any]


class MeinheldBackend(Backend):
    """Serves WSGI apps with meinheld on the inherited socket."""

    name = "meinheld"
    interfaces = frozenset({"wsgi"})
    package = "meinheld"
    extra = "meinheld"

    def prepare(self, options: ServeOptions) -> None:
        """Import meinheld; its monkey-patching is never applied.

        ``meinheld.patch.patch_all`` (chaussette called it) only replaces
        ``socket.socket`` with ``meinheld.msocket.socket``, whose waits go
        through ``server.trampoline``. With greenlet 3 on Python 3.11 that
        call raises TypeError, so patching would break every connection the
        app opens (a database, an HTTP API). Unpatched, the app's sockets
        block the worker as in any synchronous server, which is how
        gunicorn's meinheld worker runs too.
        """
        try:
            self._server = require("meinheld.server", self.name, self.extra)
        except BackendUnavailable as exc:
            raise BackendUnavailable(f"{exc.message}; {PIN_HINT}") from exc
        if options.monkey_patch:
            log.debug("meinheld: stdlib left unpatched (see the module doc)")

    def serve(self, sock: socket.socket, app: App, context: ServeContext) -> None:
        """Serve until SIGTERM/SIGINT, then drain within graceful_timeout."""
        server = self._server
        _configure(server, sock, context.options)
        loop = MeinheldLoop(server, context)
        server.set_watchdog(loop.tick)
        server.schedule_call(0, loop.started)
        server.run(environ_fixer(app, sock, context.options.io_timeout), 1)
        loop.watch.loop_ended()
        # meinheld closed the descriptor when its loop ended; forget the
        # number so that closing ``sock`` cannot hit a descriptor reused since.
        sock.detach()


def _configure(server: Any, sock: socket.socket, options: ServeOptions) -> None:
    server.set_listen_socket([sock.fileno()])  # a list: see below
    server.set_access_logger(None)
    server.set_error_logger(ErrorLogger())
    server.set_keepalive(_keepalive_seconds(options.keepalive_timeout))
    server.set_max_content_length(MAX_CONTENT_LENGTH)
    if options.concurrency is not None:
        _raise_fd_ceiling(server, options.concurrency)
    # (set_listen_socket given a bare int drops a reference it does not own;
    # the list form is the one gunicorn's worker uses and counts correctly.)


def _keepalive_seconds(timeout: float) -> int:
    """meinheld's argument: whole seconds, 0 for keep-alive off."""
    if timeout <= 0:
        return 0
    return whole_seconds(timeout, "--keepalive-timeout")


def _raise_fd_ceiling(server: Any, concurrency: int) -> None:
    """--spawn N: make room for N connections; never lower the ceiling.

    meinheld has no bound on connections, only on descriptor numbers
    (picoev's max_fd, 4096 by default), and a connection whose descriptor
    lies beyond it is not served at all; lowering it would only break.
    """
    wanted = concurrency + FD_HEADROOM
    if wanted > server.get_picoev_max_fd():
        server.set_picoev_max_fd(wanted)


class ErrorLogger:
    """meinheld's error hook: it calls ``error(type, value, traceback)``."""

    def error(
        self,
        exc_type: type[BaseException],
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        log.error(
            "app error: %s pid=%d",
            exc_type.__name__,
            os.getpid(),
            exc_info=(exc_type, exc, tb) if exc is not None else None,
        )


def environ_fixer(app: App, sock: socket.socket, write_timeout: float = 30.0) -> App:
    """Wrap ``app`` to set up each connection and correct the environ.

    A per-request wrapper is the only way, for two reasons:

    - meinheld fills SERVER_NAME and SERVER_PORT with 127.0.0.1 and 8000
      unless it bound the socket itself, and reads REMOTE_ADDR from a buffer
      shared by all connections (inet_ntoa's), so a keep-alive request can
      carry the address of whoever connected last; on IPv6 it is always
      0.0.0.0. The peer is read from the connection itself.
    - A response that must wait for the socket to drain makes meinheld park
      the request's greenlet from C, which is unsafe with greenlet 3: the
      next request on that connection gets 500 or a reset, and after a few
      such the worker dies of SIGSEGV (reproduced with meinheld alone, with
      a 1 MiB response on a UNIX socket). So the connection is made
      blocking for writes, with a send timeout: a response then goes out in
      one go while the loop waits, which behind a proxy that reads at once
      (nginx) costs nothing. Only a client that reads nothing for
      ``write_timeout`` (``--io-timeout``) brings back the parked write.

    Both are done once per connection (see ``_Connections``): a request
    that follows on a kept-alive connection costs one ``fcntl``.
    """
    # meinheld also sends the body of a HEAD response, and header values
    # with CR or NUL in them (see head.py).
    app = guard_response(app)
    connections = _Connections(sock.family, write_timeout)
    if sock.family == socket.AF_UNIX:
        return _unix_fixer(app, connections)
    host, port = sock.getsockname()[:2]
    return _tcp_fixer(app, connections, str(host), str(port))


def _unix_fixer(app: App, connections: _Connections) -> App:
    def unix_app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        fd = environ["meinheld.client"].get_fd()
        connections.peer(fd)
        if connections.refuses(fd, environ):
            return connections.refuse(fd, start_response)
        environ["SERVER_NAME"] = "localhost"
        environ["SERVER_PORT"] = "80"
        environ["REMOTE_ADDR"] = ""
        environ.pop("REMOTE_PORT", None)
        return app(environ, start_response)

    return unix_app


def _tcp_fixer(app: App, connections: _Connections, host: str, port: str) -> App:
    def tcp_app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        fd = environ["meinheld.client"].get_fd()
        peer = connections.peer(fd)
        if connections.refuses(fd, environ):
            return connections.refuse(fd, start_response)
        environ["SERVER_NAME"] = host
        environ["SERVER_PORT"] = port
        if peer is not None:
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = peer
        return app(environ, start_response)

    return tcp_app


def _odd_coding(environ: dict[str, Any]) -> bool:
    """Whether a Transfer-Encoding is other than one final ``chunked``.

    meinheld frames such a request by its Content-Length, or as having no
    body, where a proxy in front may frame it otherwise: what follows could
    then be read as a request of its own (request smuggling).
    """
    codings = environ["HTTP_TRANSFER_ENCODING"].lower().split(",")
    return environ.get("SERVER_PROTOCOL") != "HTTP/1.1" or [
        coding.strip(" \t") for coding in codings
    ] != ["chunked"]


class _Connections:
    """What each connection needs once: blocking writes, and its peer; and
    the connections whose requests are refused.

    meinheld's client object cannot be told apart across connections (it
    is reused, and takes no weak reference), so a connection is known by
    its descriptor, and a new one by its O_NONBLOCK flag: meinheld accepts
    every connection non-blocking, and only ``_prepare`` clears the flag.
    A descriptor closed and handed to a new connection is thus prepared
    again, and its cached peer replaced.

    meinheld ignores the app's ``Connection: close`` and goes on to parse
    what the client sent next, so a refused connection is marked: every
    later request on it is refused too, never reaching the app, and it is
    shut down once the refusal is written.
    """

    def __init__(self, family: int, write_timeout: float) -> None:
        self._family = family
        # SO_SNDTIMEO's timeval: how long one write may wait for a client
        # that reads nothing (see environ_fixer).
        seconds = int(write_timeout)
        micros = int((write_timeout - seconds) * 1_000_000)
        self._write_timeout = struct.pack("ll", seconds, micros)
        self._peers: dict[int, tuple[str, str] | None] = {}
        self._refused: set[int] = set()

    def peer(self, fd: int) -> tuple[str, str] | None:
        """The TCP peer as strings (None on UNIX, or once the peer is gone)."""
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
            self._peers[fd] = self._prepare(fd)
            self._refused.discard(fd)
        return self._peers.get(fd)

    def refuses(self, fd: int, environ: dict[str, Any]) -> bool:
        """Whether this request is refused; ``peer`` has seen ``fd``."""
        if fd in self._refused:
            return True
        return "HTTP_TRANSFER_ENCODING" in environ and _odd_coding(environ)

    def refuse(self, fd: int, start_response: StartResponse) -> Any:
        """Answer 400 and shut the connection down after it."""
        log.info("rejected: 400 transfer coding other than chunked pid=%d", os.getpid())
        self._refused.add(fd)
        body = b"400 Bad Request\n"
        start_response(
            "400 Bad Request",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ],
        )
        return _ThenShutDown(body, fd, self._family)

    def _prepare(self, fd: int) -> tuple[str, str] | None:
        # Family, type and protocol given: the socket object queries nothing.
        conn = socket.socket(self._family, socket.SOCK_STREAM, 0, fd)
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self._write_timeout)
            conn.setblocking(True)
            if self._family == socket.AF_UNIX:
                return None
            host, port = conn.getpeername()[:2]
            return str(host), str(port)
        except OSError:
            return None  # the peer is gone; the response will not reach it
        finally:
            conn.detach()


class _ThenShutDown:
    """A response body after which its connection is shut down.

    meinheld closes a body once it has written it: the shutdown comes
    after the response, and meinheld then sees the connection end.
    """

    def __init__(self, body: bytes, fd: int, family: int) -> None:
        self._body = body
        self._fd = fd
        self._family = family

    def __iter__(self) -> Iterator[bytes]:
        yield self._body

    def close(self) -> None:
        conn = socket.socket(self._family, socket.SOCK_STREAM, 0, self._fd)
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the peer is gone already
        finally:
            conn.detach()
