"""The client connections of the werkzeug backend, and their head deadlines.

``Connections`` is the one record of a worker's connections: which are
open, which still wait for their request line (a stop wakes those), and
by when each must have sent its head. ``HeadWatch`` is the thread that
shuts down the connections whose head is late.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Connections:
    """The client connections of this worker, which are mid-request, and by
    when each must have sent its head."""

    def __init__(self, header_timeout: float) -> None:
        self._changed = threading.Condition()
        self._open: set[socket.socket] = set()
        self._waiting: set[socket.socket] = set()
        self._header_timeout = header_timeout
        # Connection -> deadline of its head, in order of due (one timeout).
        self._heads: dict[socket.socket, float] = {}

    def opened(self, conn: socket.socket) -> None:
        # One request a connection: its head is due header_timeout from now.
        with self._changed:
            self._open.add(conn)
            self._waiting.add(conn)
            self._heads[conn] = time.monotonic() + self._header_timeout

    def started(self, conn: socket.socket) -> None:
        """The request line of ``conn`` has arrived."""
        with self._changed:
            self._waiting.discard(conn)

    def head_read(self, conn: socket.socket) -> None:
        """The head of ``conn`` is in (or refused): no deadline any more."""
        with self._changed:
            self._heads.pop(conn, None)

    def closed(self, conn: socket.socket) -> None:
        with self._changed:
            self._open.discard(conn)
            self._waiting.discard(conn)
            self._heads.pop(conn, None)
            self._changed.notify_all()

    def cut_late_heads(self) -> float:
        """Shut down the connections whose head is late; the next due."""
        now = time.monotonic()
        with self._changed:
            late = []
            for conn, due in self._heads.items():
                if due > now:
                    break
                late.append(conn)
            for conn in late:
                del self._heads[conn]
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            return next(iter(self._heads.values()), now + self._header_timeout)

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


class HeadWatch:
    """A thread that ends the connections whose head is late.

    http.server reads with a timeout on each read, so a client trickling
    its head (slowloris) would hold its thread for as long as it likes;
    this gives every head ``--header-timeout`` from the connection's start.
    """

    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="werkzeug-heads", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            due = self._connections.cut_late_heads()
            if self._stopped.wait(max(0.05, due - time.monotonic())):
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=1.0)
