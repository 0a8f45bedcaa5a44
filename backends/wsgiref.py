"""The ``wsgiref`` backend: a threaded HTTP/1.1 WSGI server on the stdlib.

Theory of operation. One *poller* thread owns an epoll set that holds the
listening socket, a wake-up pipe and every waiting connection: one just
accepted, one kept alive between two requests, or one whose request head
has only partly arrived (``wsgiref_waiting``). When a waiting connection
becomes readable, the poller reads what came; once a whole head is in, it
hands the connection to a pool of at most ``concurrency`` worker threads.
A worker parses the request, calls the app, writes the response and gives
the connection back to the poller, or closes it. A waiting connection thus
costs a descriptor, not a thread: a client trickling its head (slowloris)
holds none, and is answered 408 at ``--header-timeout``. A slow body or a
slow reader holds one thread, for ``--io-timeout`` without progress at most.

The poller accepts only while a worker thread is free. When every thread is
busy it takes the listening socket out of its epoll set, so that new
connections wait in the kernel's backlog, which sibling workers share and
drain, instead of in a queue of this process.

The main thread only waits, in ``StopRequest``. On SIGTERM or SIGINT it
asks the poller to close this process's listening descriptor and every idle
kept-alive connection, then waits up to ``graceful_timeout`` for the busy
ones; a response written meanwhile says ``Connection: close``. A connection
accepted whose request has not arrived yet is not idle in that sense: its
client is owed an answer (a proxy writes its request right after connecting,
and would turn the close into a 502), so it gets ``FRESH_GRACE`` seconds for
its request to arrive.

This module is the server: poller, threads, stop. The waiting connections
and their deadlines are ``wsgiref_waiting``; what a worker does with a
connection is ``wsgi11`` (request cycle) and ``wsgi11_response`` (framing);
the HTTP parsing is ``http11`` (heads) and ``http11_body`` (bodies).

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
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from juggler.backends.base import App, Backend, Interface, ServeContext, ServeOptions
from juggler.backends.http11 import error_response
from juggler.backends.signals import StopRequest
from juggler.backends.wsgi11 import Connection, WsgiHandler, close_connection
from juggler.backends.wsgiref_waiting import Waiting

log = logging.getLogger("juggler.backends.wsgiref")

DEFAULT_THREADS = 32
# Open connections, busy and idle, past which this worker stops accepting.
MAX_CONNECTIONS = 1000

# accept() errors that mean "out of descriptors or memory": retrying at once
# would spin, so accepting pauses until a connection closes or this passes.
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_BACKOFF = 0.5
# accept() errors that no retry cures.
_BROKEN_LISTENER = (errno.EBADF, errno.EINVAL, errno.ENOTSOCK)
# During a stop, how long a connection accepted before it may take to send
# its first request. One on its way arrives within milliseconds; a client
# still silent after this is a pre-connect, closed like any idle one.
FRESH_GRACE = 1.0


class WsgirefBackend(Backend):
    """A threaded HTTP/1.1 WSGI server from the standard library alone."""

    name = "wsgiref"
    interfaces: ClassVar[frozenset[Interface]] = frozenset({"wsgi"})

    def serve(self, sock: socket.socket, app: App, context: ServeContext) -> None:
        options = context.options
        # Left open on purpose: a worker thread left running past the
        # graceful timeout may still wake it, and a signal that arrives while
        # the runner winds down must still find the pipe its handler writes to.
        stop = StopRequest()
        stop.install()
        handler = WsgiHandler(app, options, sock)
        server = Server(
            sock, handler, options, on_crash=stop.trigger, wake_main=stop.wake
        )
        server.start()
        context.ready()

        stop.wait()
        context.draining()
        server.stop()
        drained = stop.wait_until(server.drained, options.graceful_timeout)
        server.release_threads()
        if not drained:
            log.warning(
                "graceful_timeout=%gs reached with %d connection(s) in flight; "
                "leaving them pid=%d",
                options.graceful_timeout,
                server.busy,
                os.getpid(),
            )


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
        idle_timeout = _idle_timeout(options)
        self._idle_timeout = idle_timeout
        self._on_crash = on_crash
        self._wake_main = wake_main  # called when the last busy one is done
        self._pid = os.getpid()

        # The lock guards every field below it and the epoll set.
        self._lock = threading.Lock()
        self._waiting = Waiting(idle_timeout, options.header_timeout)
        self.busy = 0  # connections handed to workers and not yet back
        self._open = 0
        self._paused_until = 0.0  # accept() ran out of resources until then
        self._listening = False
        self._stopping = False
        self._poller_ended = False
        self._epoll, self._wake_r, self._wake_w = _epoll_with_wake_pipe()

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

    def drained(self) -> bool:
        """Whether the stop left nothing to finish: the poller has ended (so
        nothing more is accepted), no connection is busy, and none accepted
        still owes its first request.

        The poller may still accept what the kernel woke it for after the
        stop began (``_accept_ready``): until it has ended, a quiet moment
        with nothing busy is no proof that nothing more is coming, and a
        worker that exited then would drop a connection it had accepted.
        """
        with self._lock:
            return self._poller_ended and self.busy == 0 and not self._waiting

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
            # The last fresh connection may have just timed out: the main
            # thread waits for a word that no worker thread will give.
            self._wake_main()

    def _poll_once(self) -> bool:
        self._update_listening()
        if self._stopping:
            self._shed_idle()
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
        self._expire(time.monotonic())
        with self._lock:
            # Done once stopping, unless an accepted request is still owed.
            return self._stopping and not self._waiting

    def _shed_idle(self) -> None:
        """At a stop: close the kept-alive idle connections (their clients
        retry on a new one), and give the fresh ones FRESH_GRACE at most."""
        with self._lock:
            closing = self._waiting.shed(time.monotonic() + FRESH_GRACE)
            self._open -= len(closing)
        for conn in closing:
            conn.sock.close()

    def _poll_timeout(self) -> float:
        # Sleep until the first waiting connection is due (see Waiting), or
        # a whole idle timeout if none waits: never past a deadline.
        with self._lock:
            if self._stopping and not self._waiting:
                return 0
            due = self._waiting.next_due()
            if due is None:
                due = time.monotonic() + self._idle_timeout
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
        return not self._stopping and self._has_room_locked()

    def _has_room_locked(self) -> bool:
        return (
            self.busy < self._max_threads
            and self._open < MAX_CONNECTIONS
            and not self._paused_until
        )

    def _accept_ready(self) -> None:
        # Even if a stop began since the poll: the kernel woke this worker
        # alone for what waits in the backlog (EPOLLEXCLUSIVE) and wakes no
        # sibling for it later; left there, it would wait for the next
        # client to connect. The next pass leaves the listener's queue.
        while True:
            with self._lock:
                if not self._has_room_locked():
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
        # that has said nothing yet, or only part of its head, waits in the
        # poller, holding no thread.
        conn = self._handler.connection(sock, address)
        if conn is None:
            return
        with self._lock:
            self._open += 1
            fresh = not conn.reader.buf
            if not self._handler.ready(conn) and self._park_locked(conn, fresh):
                return
        self._to_worker(conn)

    def _dispatch(self, fd: int) -> None:
        """A waiting connection is readable: serve it once its head is in."""
        with self._lock:
            waiting = self._waiting
            fresh = fd in waiting.fresh
            waiting.fresh.discard(fd)
            conn = waiting.idle.pop(fd, None) or waiting.heads.get(fd)
        if conn is None:
            return
        arrived = self._handler.read_arrived(conn)
        with self._lock:
            waits = arrived in ("nothing", "partial")
            if waits and self._wait_more_locked(conn, fresh):
                return
            self._waiting.heads.pop(fd, None)
            if arrived != "ready":
                self._open -= 1
                self._paused_until = 0.0
        if arrived == "ready":
            self._to_worker(conn)
        else:
            conn.sock.close()

    def _wait_more_locked(self, conn: Connection, fresh: bool) -> bool:
        """Back in the epoll set; a head begun now starts its deadline."""
        if not self._arm_locked(conn):
            return False
        now = time.monotonic()
        if not conn.reader.buf:  # woken for nothing
            self._waiting.add_idle(conn, now, fresh)
        elif conn.fd not in self._waiting.heads:
            self._waiting.add_head(conn, now)
            if self._stopping:  # as the others got at the stop (_shed_idle)
                conn.deadline = min(conn.deadline, now + FRESH_GRACE)
        return True

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

    def _expire(self, now: float) -> None:
        with self._lock:
            idle, heads = self._waiting.expire(now)
            self._open -= len(idle) + len(heads)
            if idle or heads:
                self._paused_until = 0.0
        for conn in idle:
            conn.sock.close()
        for conn in heads:
            log.debug("408: a head not complete in time pid=%d", self._pid)
            # Best effort: the send buffer of a connection that only sent
            # holds the whole answer, and a client that reads nothing gets
            # the close anyway.
            with contextlib.suppress(OSError):
                os.write(conn.fd, error_response(408))
            conn.sock.close()

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _close_all(self) -> None:
        with self._lock:
            self._stopping = True
            self._poller_ended = True
            idle = self._waiting.clear()
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
        close_connection(conn)
        with self._lock:
            self.busy -= 1
            self._open -= 1
            self._paused_until = 0.0
            self._after_release_locked()

    def _after_release_locked(self) -> None:
        if self.busy == 0 and self._stopping and not self._waiting:
            self._wake_main()
        if not self._listening and self._can_accept_locked():
            self._wake_locked()

    # -- shared, with the lock held ---------------------------------------------
    def _park_locked(self, conn: Connection, fresh: bool = False) -> bool:
        """Wait in the poller: for a request, or for the rest of a head."""
        if not self._arm_locked(conn):
            return False
        now = time.monotonic()
        if conn.reader.buf:
            self._waiting.add_head(conn, now)
        else:
            self._waiting.add_idle(conn, now, fresh)
        return True

    def _arm_locked(self, conn: Connection) -> bool:
        """Watch a connection for input, once (until armed again)."""
        # One-shot: after one event the connection stays in the set, disabled,
        # until it is armed again; closing it removes it for good.
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
        return True

    def _wake_locked(self) -> None:
        if self._wake_w >= 0:
            # A full pipe already holds a wake-up.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")


def _idle_timeout(options: ServeOptions) -> float:
    # Kept-alive and silent new connections wait alike; with keep-alive off
    # only new ones wait, for as long as a request head may take.
    keepalive = options.keepalive_timeout
    return keepalive if keepalive > 0 else options.header_timeout


def _epoll_with_wake_pipe() -> tuple[select.epoll, int, int]:
    """An epoll set that holds the read end of a new wake-up pipe."""
    epoll = select.epoll()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    epoll.register(wake_r, select.EPOLLIN)
    return epoll, wake_r, wake_w
