"""The connections the wsgiref poller holds while no worker thread has them.

Two kinds wait, each in a dict of its own. Every entry of one dict gets the
same timeout when it is added, so the dict's order is the order in which
they fall due, and the first entry is the next due:

- *idle*: no byte of a request yet (a new connection, or a kept-alive one
  between two requests); closed once the idle timeout passes;
- *heads*: part of a request head has arrived. The rest is awaited here,
  not in a worker thread, so a client that trickles its head (slowloris)
  holds a descriptor and no thread. The deadline is absolute: set when the
  head's first bytes arrive and kept while more come, so a head not
  complete by then is answered 408 and closed, however often a byte comes.

``fresh`` marks the idle ones that never sent a request: at a stop their
client is owed an answer, where a kept-alive one is closed at once.

Not thread-safe: the server calls it with its lock held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from juggler.backends.wsgi11 import Connection


class Waiting:
    """Idle connections and unfinished heads, each kind in order of due."""

    def __init__(self, idle_timeout: float, header_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.idle: dict[int, Connection] = {}
        self.heads: dict[int, Connection] = {}
        self.fresh: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.idle or self.heads)

    def add_idle(self, conn: Connection, now: float, fresh: bool = False) -> None:
        conn.deadline = now + self.idle_timeout
        self.idle[conn.fd] = conn
        if fresh:
            self.fresh.add(conn.fd)

    def add_head(self, conn: Connection, now: float) -> None:
        """Wait for the rest of a head; its deadline runs from now."""
        conn.deadline = now + self.header_timeout
        self.heads[conn.fd] = conn

    def pop(self, fd: int) -> Connection | None:
        """Take a connection out, whichever kind it is."""
        self.fresh.discard(fd)
        return self.idle.pop(fd, None) or self.heads.pop(fd, None)

    def next_due(self) -> float | None:
        firsts = [next(iter(kind.values())) for kind in (self.idle, self.heads) if kind]
        return min((conn.deadline for conn in firsts), default=None)

    def expire(self, now: float) -> tuple[list[Connection], list[Connection]]:
        """Take out the idle connections and the heads that are due."""
        return _take_due(self.idle, now, self.fresh), _take_due(self.heads, now)

    def shed(self, due: float) -> list[Connection]:
        """At a stop: take out the kept-alive idle ones; give the others
        (fresh, or with a head on its way) until ``due`` at most."""
        kept_alive = [fd for fd in self.idle if fd not in self.fresh]
        shed = [self.idle.pop(fd) for fd in kept_alive]
        # Every deadline capped alike keeps each dict in order of due.
        for conn in (*self.idle.values(), *self.heads.values()):
            conn.deadline = min(conn.deadline, due)
        return shed

    def clear(self) -> list[Connection]:
        every = [*self.idle.values(), *self.heads.values()]
        self.idle.clear()
        self.heads.clear()
        self.fresh.clear()
        return every


def _take_due(
    kind: dict[int, Connection], now: float, fresh: set[int] | None = None
) -> list[Connection]:
    due = []
    for fd, conn in kind.items():
        if conn.deadline > now:
            break
        due.append(fd)
    if fresh is not None:
        fresh.difference_update(due)
    return [kind.pop(fd) for fd in due]
