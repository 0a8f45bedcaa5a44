"""The ``wsgiref`` backend: a threaded HTTP/1.1 WSGI server on the stdlib.

Theory of operation. One *poller* thread owns an epoll set that holds the
listening socket, a wake-up pipe and every idle connection: one just
accepted, or one kept alive between two requests. When an idle connection
becomes readable, the poller hands it to a pool of at most ``concurrency``
worker threads. A worker reads the request, calls the app, writes the
response and gives the connection back to the poller, or closes it. An idle
connection thus costs a descriptor, not a thread, and a slow client or app
holds one thread, never the whole worker.

The poller accepts only while a worker thread is free. When every thread is
busy it takes the listening socket out of its epoll set, so that new
connections wait in the kernel's backlog, which sibling workers share and
drain, instead of in a queue of this process.

The main thread only waits (see ``MainThreadWaker``). On SIGTERM or SIGINT
it asks the poller to close this process's listening descriptor and every
idle connection, then waits up to ``graceful_timeout`` for the busy ones; a
response written meanwhile says ``Connection: close``.

Known shortcoming: epoll makes this backend Linux-only, like the rest of
juggler. A port needs another poller whose set can change while a thread
waits on it (kqueue can), not ``selectors``, which cannot be shared with
worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar
from urllib.parse import unquote

from juggler.backends.base import (
    App,
    Backend,
    Interface,
    ServeContext,
    ServeOptions,
)
from juggler.backends.http11 import (
    HEAD_TIMEOUT,
    RECV_SIZE,
    Body,
    ClientDisconnected,
    HttpError,
    Reader,
    Request,
    body_for,
    date_field,
    error_response,
    parse_head,
)
from juggler.backends.signals import StopRequest

log = logging.getLogger("juggler.backends.wsgiref")

DEFAULT_THREADS = 32
# Seconds a worker waits for a client that stops sending a body it announced
# or stops reading its response: a limit on each recv or send that makes no
# progress, not on the whole transfer.
IO_TIMEOUT = 30.0
# Open connections, busy and idle, past which this worker stops accepting.
MAX_CONNECTIONS = 1000
# Closing a socket with unread input makes the kernel send a reset that can
# destroy a response the client has not read yet. So a connection closed in
# that state is half-closed and its input read and discarded for a moment.
LINGER_TIMEOUT = 2.0
LINGER_BYTES = 256 * 1024
# Request body the app left unread that a worker reads and discards to keep
# the connection; past this it closes the connection instead.
DRAIN_LIMIT = 64 * 1024
# Below this size the response head and the first body chunk are joined and
# written with one system call; above it, copying would cost more.
SMALL_WRITE = 64 * 1024

# accept() errors that mean "out of descriptors or memory": retrying at once
# would spin, so accepting pauses until a connection closes or this passes.
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_BACKOFF = 0.5
# accept() errors that no retry cures.
_BROKEN_LISTENER = (errno.EBADF, errno.EINVAL, errno.ENOTSOCK)


class WsgirefBackend(Backend):
    """A threaded HTTP/1.1 WSGI server from the standard library alone."""

    name = "wsgiref"
    interfaces: ClassVar[frozenset[Interface]] = frozenset({"wsgi"})

    def serve(self, sock: socket.socket, app: App, context: ServeContext) -> None:
        options = context.options
        stop = StopRequest()
        stop.install()
        main = MainThreadWaker()

        def crashed() -> None:
            stop.trigger()
            main.wake()

        handler = WsgiHandler(app, options, sock)
        server = Server(sock, handler, options, on_crash=crashed, wake_main=main.wake)
        server.start()
        context.ready()

        main.wait_until(lambda: stop.signum is not None)
        context.draining()
        server.stop()
        drained = main.wait_until(lambda: server.busy == 0, options.graceful_timeout)
        server.release_threads()
        main.close()
        if not drained:
            log.warning(
                "graceful_timeout=%gs reached with %d connection(s) in flight; "
                "leaving them pid=%d",
                options.graceful_timeout,
                server.busy,
                os.getpid(),
            )


class MainThreadWaker:
    """Blocks the main thread until a signal arrives or a thread wakes it.

    CPython runs a signal's Python handler in the main thread, at its next
    bytecode. If the signal lands just before the main thread blocks in a
    lock or a read, or lands on another thread, the handler waits until the
    main thread wakes for another reason: a second SIGINT could wait for the
    whole graceful timeout. ``signal.set_wakeup_fd`` closes that gap: the C
    handler writes to our pipe whichever thread it runs on, and ``select``
    on that pipe returns.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)

    def wake(self) -> None:
        """Callable from any thread."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"\0")

    def wait_until(
        self, done: Callable[[], bool], timeout: float | None = None
    ) -> bool:
        """Wait until ``done()``; False if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Pending signal handlers run at the loop's jump back, before done().
        while not done():
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
            select.select([self._read_fd], [], [], remaining)
            with contextlib.suppress(BlockingIOError):
                os.read(self._read_fd, 4096)
        return True

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self._read_fd)
        # The write end stays open: a worker left running past the graceful
        # timeout may still call wake(), and a reused descriptor number would
        # then get its byte.


class Server:
    """The poller, the worker threads and the graceful stop of one socket."""

    def __init__(
        self,
        sock: socket.socket,
        handler: WsgiHandler,
        options: ServeOptions,
        on_crash: Callable[[], None],
        wake_main: Callable[[], None],
    ) -> None:
        self._listener = sock
        self._listener_fd = sock.fileno()
        self._handler = handler
        self._max_threads = options.concurrency or DEFAULT_THREADS
        # Kept-alive and silent new connections wait alike; with keep-alive
        # off only new ones wait, for as long as a request head may take.
        keepalive = options.keepalive_timeout
        self._idle_timeout = keepalive if keepalive > 0 else HEAD_TIMEOUT
        self._on_crash = on_crash
        self._wake_main = wake_main  # called when the last busy one is done
        self._pid = os.getpid()

        # The lock guards every field below it and the epoll set.
        self._lock = threading.Lock()
        self._idle: dict[int, Connection] = {}  # oldest (soonest due) first
        self.busy = 0  # connections handed to workers and not yet back
        self._open = 0
        self._paused_until = 0.0  # accept() ran out of resources until then
        self._listening = False
        self._stopping = False
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)

        self._queue: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._poller = threading.Thread(target=self._run, name="wsgiref-poller")
        # accept() must never block: a sibling worker may take the connection
        # that woke us. O_NONBLOCK lives on the open file shared with the
        # siblings, which is why every backend here polls before accepting.
        sock.setblocking(False)

    # -- life cycle (main thread) -------------------------------------------
    def start(self) -> None:
        self._poller.daemon = True
        self._poller.start()

    def stop(self) -> None:
        """Stop accepting and close idle connections; busy ones finish."""
        with self._lock:
            self._stopping = True
            self._handler.closing = True
            self._wake_locked()

    def release_threads(self) -> None:
        """Let idle worker threads end once the stop is over."""
        self._poller.join(timeout=1.0)
        for _ in self._threads:
            self._queue.put(None)

    # -- the poller thread ----------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._poll_once():
                pass
        except Exception:
            log.critical("poller failed; stopping pid=%d", self._pid, exc_info=True)
            self._on_crash()
        finally:
            self._close_all()

    def _poll_once(self) -> bool:
        self._update_listening()
        events = self._epoll.poll(self._poll_timeout())
        # Accept before handing out kept-alive connections: the kernel woke
        # this worker alone for the new connection (EPOLLEXCLUSIVE), and a
        # worker that filled its threads first would leave it in the backlog.
        if any(fd == self._listener_fd for fd, _ in events):
            self._accept_ready()
        for fd, _ in events:
            if fd == self._wake_r:
                self._drain_wake_pipe()
            elif fd != self._listener_fd:
                self._dispatch(fd)
        self._expire_idle(time.monotonic())
        return self._stopping

    def _poll_timeout(self) -> float:
        # Every idle connection gets the same timeout, so the first in the
        # dict is the first due, and one added later is due later: sleeping
        # until the first is due, or a whole timeout if none is idle, never
        # oversleeps a deadline.
        with self._lock:
            if self._stopping:
                return 0
            if not self._idle:
                due = time.monotonic() + self._idle_timeout
            else:
                due = next(iter(self._idle.values())).deadline
            if self._paused_until:
                due = min(due, self._paused_until)
        return max(0.0, due - time.monotonic())

    def _update_listening(self) -> None:
        with self._lock:
            if self._paused_until and time.monotonic() >= self._paused_until:
                self._paused_until = 0.0
            want = self._can_accept_locked()
            if want == self._listening:
                return
            self._listening = want
            if want:
                # EPOLLEXCLUSIVE: wake one sibling per connection, not all.
                flags = select.EPOLLIN | select.EPOLLEXCLUSIVE
                self._epoll.register(self._listener_fd, flags)
            else:
                self._epoll.unregister(self._listener_fd)

    def _can_accept_locked(self) -> bool:
        return (
            not self._stopping
            and self.busy < self._max_threads
            and self._open < MAX_CONNECTIONS
            and not self._paused_until
        )

    def _accept_ready(self) -> None:
        while True:
            with self._lock:
                if not self._can_accept_locked():
                    return
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return  # a sibling took it, or the backlog is empty
            except OSError as exc:
                if self._accept_failed(exc):
                    continue
                return
            self._adopt(sock, address)

    def _accept_failed(self, exc: OSError) -> bool:
        """Deal with a failed accept(); True if the next one may work."""
        if exc.errno in _BROKEN_LISTENER:
            raise exc
        if exc.errno in _RESOURCE_ERRORS:
            log.error(
                "cannot accept (%s); pausing accept for %gs or until a "
                "connection closes pid=%d",
                exc.strerror,
                ACCEPT_BACKOFF,
                self._pid,
            )
            with self._lock:
                self._paused_until = time.monotonic() + ACCEPT_BACKOFF
            return False
        # Linux reports some errors of a connection that failed before we
        # took it (reset, network down) from accept(); the next may be fine.
        log.debug("accept failed: %s pid=%d", exc, self._pid)
        return True

    def _adopt(self, sock: socket.socket, address: Any) -> None:
        # A client usually sends its request with the handshake: then the
        # connection goes straight to a thread and counts against the pool,
        # so that a burst is accepted only as far as threads are free. One
        # that has said nothing yet waits in the idle set, holding no thread.
        try:
            first = sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            first = b""
        except OSError:
            sock.close()
            return
        if sock.family != socket.AF_UNIX:
            # Responses are written whole; Nagle would only delay them.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(IO_TIMEOUT)
        reader = Reader(sock, IO_TIMEOUT)
        reader.buf += first
        conn = self._handler.connection(sock, address, reader)
        with self._lock:
            self._open += 1
            if not first and self._park_locked(conn):
                return
        self._to_worker(conn)

    def _dispatch(self, fd: int) -> None:
        with self._lock:
            conn = self._idle.pop(fd, None)
        if conn is not None:
            self._to_worker(conn)

    def _to_worker(self, conn: Connection) -> None:
        with self._lock:
            self.busy += 1
            threads = len(self._threads)
            grow = self.busy > threads and threads < self._max_threads
        if grow:
            self._start_thread()
        self._queue.put(conn)

    def _start_thread(self) -> None:
        name = f"wsgiref-worker-{len(self._threads) + 1}"
        thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _expire_idle(self, now: float) -> None:
        expired = []
        with self._lock:
            for fd, conn in self._idle.items():
                if conn.deadline > now:
                    break
                expired.append(fd)
            for fd in expired:
                self._idle.pop(fd).sock.close()
            self._open -= len(expired)
            if expired:
                self._paused_until = 0.0

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _close_all(self) -> None:
        with self._lock:
            self._stopping = True
            idle = list(self._idle.values())
            self._idle.clear()
            self._open -= len(idle)
            if self._listening:
                self._epoll.unregister(self._listener_fd)
                self._listening = False
            self._epoll.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1
        # Only this process's descriptor: siblings keep accepting on theirs.
        self._listener.close()
        for conn in idle:
            conn.sock.close()

    # -- worker threads ---------------------------------------------------------
    def _work(self) -> None:
        while (conn := self._queue.get()) is not None:
            keep = False
            try:
                keep = self._handler.serve(conn)
            except Exception:
                log.exception("error serving a connection pid=%d", self._pid)
            self._release(conn, keep)

    def _release(self, conn: Connection, keep: bool) -> None:
        if keep:
            with self._lock:
                if not self._stopping and self._park_locked(conn):
                    self.busy -= 1
                    self._after_release_locked()
                    return
        close(conn)
        with self._lock:
            self.busy -= 1
            self._open -= 1
            self._paused_until = 0.0
            self._after_release_locked()

    def _after_release_locked(self) -> None:
        if self.busy == 0 and self._stopping:
            self._wake_main()
        if not self._listening and self._can_accept_locked():
            self._wake_locked()

    # -- shared, with the lock held ---------------------------------------------
    def _park_locked(self, conn: Connection) -> bool:
        """Put a connection in the idle set until it is readable or due."""
        # One-shot: after one event the connection stays in the set, disabled,
        # until a worker parks it again; closing it removes it for good.
        flags = select.EPOLLIN | select.EPOLLONESHOT
        try:
            if conn.armed:
                self._epoll.modify(conn.fd, flags)
            else:
                self._epoll.register(conn.fd, flags)
                conn.armed = True
        except OSError:
            log.exception("cannot watch a connection pid=%d", self._pid)
            return False
        conn.deadline = time.monotonic() + self._idle_timeout
        self._idle[conn.fd] = conn
        return True

    def _wake_locked(self) -> None:
        if self._wake_w >= 0:
            # A full pipe already holds a wake-up.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")


def close(conn: Connection) -> None:
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


class WsgiHandler:
    """Runs the requests of one connection through the app, in a worker."""

    def __init__(
        self, app: App, options: ServeOptions, listener: socket.socket
    ) -> None:
        self._app = app
        self._limits = options.limits
        self._unix = listener.family == socket.AF_UNIX
        self._base = _base_environ(listener)
        self._pid = os.getpid()
        # Whether every response closes its connection: keep-alive is off,
        # or a stop has begun.
        self.closing = options.keepalive_timeout <= 0

    def connection(
        self, sock: socket.socket, address: Any, reader: Reader
    ) -> Connection:
        environ = self._base.copy()
        if self._unix:
            environ["REMOTE_ADDR"] = ""
        else:
            environ["REMOTE_ADDR"] = address[0]
            environ["REMOTE_PORT"] = str(address[1])
        return Connection(sock, reader, environ)

    def serve(self, conn: Connection) -> bool:
        """Serve requests until the connection is idle (True) or done."""
        while self._serve_one(conn):
            if not conn.reader.buf:
                return True
        return False

    def _serve_one(self, conn: Connection) -> bool:
        try:
            deadline = time.monotonic() + HEAD_TIMEOUT
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


_STATUS = re.compile(r"[2-5]\d\d [\t\x20-\x7e\x80-\xff]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# PEP 3333 leaves these to the server; an app that sets them is refused.
_HOP_BY_HOP = frozenset(
    ("keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade")
)
_SPECIAL = _HOP_BY_HOP | {"connection", "content-length", "date"}


class Response:
    """One response: ``start_response``, ``write`` and the framing."""

    __slots__ = (
        "_bodyless",
        "_chunked",
        "_close",
        "_dated",
        "_fields",
        "_handler",
        "_left",
        "_length",
        "_request",
        "_sock",
        "body",
        "keep_alive",
        "started",
        "status",
    )

    def __init__(
        self, sock: socket.socket, request: Request, body: Body, handler: WsgiHandler
    ) -> None:
        self._sock = sock
        self._request = request
        self.body = body
        self._handler = handler  # its closing flag says "Connection: close"
        self.status: str | None = None
        self._fields = ""  # the app's header lines
        self._length: int | None = None  # the app's Content-Length
        self._close = False  # the app said "Connection: close"
        self._dated = False  # the app set Date
        self.started = False  # the head has been sent
        self.keep_alive = request.keep_alive
        self._bodyless = False
        self._chunked = False
        self._left: int | None = None  # body bytes the framing still allows

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        """The WSGI ``start_response`` callable (PEP 3333)."""
        if exc_info is not None:
            try:
                if self.started:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response() called twice without exc_info")
        if type(status) is not str or not _STATUS.fullmatch(status):
            raise ValueError(
                f"invalid status {status!r} (expected a code 200-599 and a "
                "reason, like '200 OK')"
            )
        self._fields, self._length, self._close, self._dated = _check_headers(headers)
        self.status = status
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write`` callable that ``start_response`` returns."""
        if self.status is None:
            raise RuntimeError("write() called before start_response()")
        data = _as_bytes(data)
        if self.started:
            self._body(data)
        elif data:
            self._start(data, None)

    def send(self, result: Iterable[bytes]) -> None:
        """Send what the app returned; the caller closes it."""
        if isinstance(result, FileWrapper) and self._sendfile(result):
            return
        total = None
        if self._length is None and type(result) in (list, tuple):
            # The whole body is at hand: send its length, not chunks.
            total = sum(map(len, result))
        for item in result:
            data = _as_bytes(item)
            if not data:
                continue
            if self.started:
                self._body(data)
            else:
                self._start(data, total)
            if self._bodyless:
                break
        if not self.started:
            self._start(b"", total or 0)
        self._finish()

    def send_continue(self) -> None:
        """Answer ``Expect: 100-continue``, once the app reads the body."""
        if not self.started:
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def send_error(self, status: int) -> None:
        self.started = True
        self.keep_alive = False
        self._send(error_response(status))

    def _start(self, data: bytes, total: int | None) -> None:
        if self.status is None:
            raise RuntimeError("the app returned without calling start_response()")
        request = self._request
        self._bodyless = request.method == "HEAD" or self.status[:3] in ("204", "304")
        fields = ["HTTP/1.1 ", self.status, "\r\n", self._fields]
        length = self._length
        if length is None and not self._bodyless:
            if total is not None:
                length = total
                fields.append(f"Content-Length: {total}\r\n")
            elif request.version == "HTTP/1.1":
                self._chunked = True
                fields.append("Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the body ends where the connection does
        self._left = None if self._bodyless else length
        self.keep_alive = (
            self.keep_alive
            and not self._close
            and not self._handler.closing
            and self.body.can_drain(DRAIN_LIMIT)
        )
        if not self._dated:
            fields.append(date_field())
        if not self.keep_alive:
            fields.append("Connection: close\r\n")
        elif request.version == "HTTP/1.0":
            fields.append("Connection: keep-alive\r\n")
        fields.append("\r\n")
        head = "".join(fields).encode("latin-1")
        self.started = True
        self._body(data, head)

    def _body(self, data: bytes, head: bytes = b"") -> None:
        if self._bodyless:
            data = b""
        elif self._left is not None:
            if len(data) > self._left:
                self._overflow()
                data = data[: self._left]
            self._left -= len(data)
        elif self._chunked and data:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if head and len(data) < SMALL_WRITE:
            self._send(head + data)
            return
        if head:
            self._send(head)
        if data:
            self._send(data)

    def _overflow(self) -> None:
        if not self._close:  # after the head, _close means "already warned"
            log.warning(
                "app sent more than its Content-Length=%s; response cut and "
                "connection closed pid=%d",
                self._length,
                os.getpid(),
            )
        self._close = True
        self.keep_alive = False

    def _finish(self) -> None:
        if self._chunked:
            self._send(b"0\r\n\r\n")
        elif self._left:
            log.warning(
                "app sent %d bytes fewer than its Content-Length=%s; connection "
                "closed pid=%d",
                self._left,
                self._length,
                os.getpid(),
            )
            self.keep_alive = False

    def _sendfile(self, wrapper: FileWrapper) -> bool:
        # sendfile() needs a length to send and a real file behind it.
        if self._length is None or self.started:
            return False
        try:
            offset = wrapper.filelike.tell()
            wrapper.filelike.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        self._start(b"", None)
        if self._left:
            try:
                sent = self._sock.sendfile(wrapper.filelike, offset, self._left)
            except OSError as exc:
                raise ClientDisconnected(f"sending a file: {exc}") from exc
            self._left -= sent
        self._finish()
        return True

    def _send(self, data: bytes) -> None:
        try:
            if len(data) <= SMALL_WRITE:
                self._sock.sendall(data)
                return
            # sendall()'s timeout bounds the whole call; a big body to a slow
            # reader needs a bound on each send that makes no progress.
            view = memoryview(data)
            while view:
                view = view[self._sock.send(view) :]
        except OSError as exc:
            raise ClientDisconnected(f"sending the response: {exc}") from exc


def _check_headers(
    headers: list[tuple[str, str]],
) -> tuple[str, int | None, bool, bool]:
    """Validate the app's headers: (header lines, Content-Length, close, Date)."""
    lines = []
    length = None
    close = dated = False
    for name, value in headers:
        if type(name) is not str or not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid response header name {name!r}")
        if type(value) is not str or _BAD_VALUE.search(value):
            raise ValueError(f"invalid value for response header {name}: {value!r}")
        lower = name.lower()
        if lower in _SPECIAL:
            if lower == "connection":
                close = close or "close" in value.lower()
                continue  # the server writes its own
            if lower in _HOP_BY_HOP:
                raise ValueError(f"{name} is a hop-by-hop header, the server's to set")
            if lower == "date":
                dated = True
            elif length is not None or not (value.isascii() and value.isdigit()):
                raise ValueError(f"invalid or repeated Content-Length {value!r}")
            else:
                length = int(value)
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines), length, close, dated


def _as_bytes(data: object) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"the app gave {type(data).__name__}, not bytes")


class FileWrapper:
    """``wsgi.file_wrapper``: a file sent with sendfile() when it can be."""

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        while data := self.filelike.read(self.blksize):
            yield data

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()
