"""Where a watcher's output goes: ``stdout_stream.*`` and ``stderr_stream.*``.

The path of a byte. A child whose watcher has a stream writes into a pipe;
the arbiter reads the other end on its loop (``process.OutputPipe``), cuts
what it read into lines with a ``LineSplitter`` (stream_lines.py) and hands
them, one batch per read, to the watcher's ``OutputStream``. The processes
of one watcher share it. A batch is written with one ``write``, so lines of
two processes never interleave mid-line.

The classes: ``FileStream``, ``WatchedFileStream`` and
``TimedRotatingFileStream`` write files (stream_files.py); ``StdoutStream``
and ``FancyStdoutStream`` the supervisor's stdout; ``CustomStream`` calls a
user's class, as Circus did. ``open_stream`` makes the one a config asks for.

Never blocking the loop. Writes to a regular file land in the page cache.
The supervisor's stdout may be a pipe or a terminal that stops reading: it
is written without blocking, what does not fit waits in a bounded buffer,
and what does not fit there is dropped. A custom class runs in a thread of
its own behind a bounded queue. Dropped bytes are counted and logged, at
most once per ``DROP_LOG_INTERVAL`` for each watcher's stream, naming the
watcher and the pid.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import stat
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from juggler.supervisor.config_model import StreamConfig
from juggler.supervisor.errors import SupervisorError
from juggler.supervisor.hooks import HookError, import_target
from juggler.supervisor.stream_files import (
    FileStream,
    TimedRotatingFileStream,
    WatchedFileStream,
)
from juggler.supervisor.stream_lines import (
    CONTINUED,
    MAX_LINE,
    LineSplitter,
    Piece,
    Stream,
    render,
    time_prefix,
)

__all__ = [
    "CONTINUED",
    "MAX_LINE",
    "Console",
    "CustomStream",
    "FancyStdoutStream",
    "FileStream",
    "LineSplitter",
    "OutputStream",
    "Piece",
    "StdoutStream",
    "Stream",
    "StreamError",
    "TimedRotatingFileStream",
    "WatchedFileStream",
    "open_stream",
    "render",
    "time_prefix",
]

log = logging.getLogger("juggler.supervisor")

DROP_LOG_INTERVAL = 10.0
# Bytes for the supervisor's stdout waiting on a slow reader, and for a
# custom class waiting on its thread; past these, output is dropped.
CONSOLE_BUFFER = 4 * 1024 * 1024
CUSTOM_QUEUE = 8 * 1024 * 1024
CLOSE_TIMEOUT = 5.0


class StreamError(SupervisorError):
    """A stream cannot be set up: a file that cannot be opened, a bad class."""


# -- the supervisor's stdout ---------------------------------------------------


class StdoutStream(Stream):
    """The supervisor's own stdout, written without ever blocking the loop."""

    def __init__(self) -> None:
        self.console = Console.shared()

    def write(self, pid: int, pieces: Sequence[Piece]) -> int:
        return self.console.write(render(pieces))


class FancyStdoutStream(StdoutStream):
    """Stdout with a coloured ``time [pid] |`` prefix on each line."""

    COLORS = ("red", "green", "yellow", "blue", "magenta", "cyan", "white")

    def __init__(
        self, watcher: str, *, color: str | None = None, time_format: str | None = None
    ) -> None:
        super().__init__()
        if color not in self.COLORS:
            if color is not None:
                log.warning("%s: unknown colour %r; one is picked", watcher, color)
            # Circus picked one at random; a watcher keeps its colour here.
            color = self.COLORS[zlib.crc32(watcher.encode()) % len(self.COLORS)]
        self.escape = f"\033[0;3{self.COLORS.index(color) + 1};40m".encode()
        self.time_format = time_format or "%Y-%m-%d %H:%M:%S"

    def write(self, pid: int, pieces: Sequence[Piece]) -> int:
        prefix = self.escape + time_prefix(self.time_format, pid)
        return self.console.write(render(pieces, prefix, b"\033[0m"))


class Console:
    """Non-blocking writes to the supervisor's stdout, shared by its streams.

    stdout is reopened through ``/proc/self/fd`` (a pipe or a terminal) so
    that O_NONBLOCK stays on the arbiter's own file description: children
    that inherit stdout keep a blocking one. A socket (journald) is written
    with MSG_DONTWAIT instead. Known shortcoming: where neither works,
    writes block as a plain ``write`` would.
    """

    def __init__(self, fd: int = 1) -> None:
        self._pending = bytearray()
        self._waiting = False
        self._sock: socket.socket | None = None
        mode = os.fstat(fd).st_mode
        if stat.S_ISSOCK(mode):
            self._sock = socket.socket(fileno=os.dup(fd))
            self._fd = self._sock.fileno()
        elif stat.S_ISREG(mode):
            self._fd = os.dup(fd)
        else:
            try:
                flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
                self._fd = os.open(f"/proc/self/fd/{fd}", flags)
            except OSError:
                self._fd = os.dup(fd)

    @staticmethod
    def shared() -> Console:
        """The one writer of fd 1: two would interleave partial writes."""
        global _console
        if _console is None:
            _console = Console()
        return _console

    def write(self, data: bytes) -> int:
        """Write or queue ``data``; return the bytes dropped."""
        if self._pending:
            if len(self._pending) + len(data) > CONSOLE_BUFFER:
                return len(data)
            self._pending += data
            return 0
        sent = self._send(data)
        if sent < len(data):
            self._pending += data[sent:]
            self._wait_writable()
        return 0

    def _send(self, data: bytes | bytearray) -> int:
        try:
            if self._sock is not None:
                return self._sock.send(data, socket.MSG_DONTWAIT)
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0

    def _wait_writable(self) -> None:
        if not self._waiting:
            asyncio.get_running_loop().add_writer(self._fd, self._flush)
            self._waiting = True

    def _flush(self) -> None:
        try:
            sent = self._send(self._pending)
        except OSError as exc:
            log.error("stdout stream: cannot write: %s; output dropped", exc)
            sent = len(self._pending)
        del self._pending[:sent]
        if not self._pending:
            asyncio.get_running_loop().remove_writer(self._fd)
            self._waiting = False


class CustomStream(Stream):
    """A user's class, as Circus called it: ``obj({"data", "pid", "name"})``.

    ``data`` is the child's bytes exactly as written (a cut piece comes
    without its newline and the next call continues it), ``pid`` the
    process, ``name`` ``stdout`` or ``stderr``, ``timestamp`` when it was
    read. The object is called in a thread of its own, so a slow one never
    stalls the arbiter; it falls behind by at most ``CUSTOM_QUEUE`` bytes,
    then output is dropped. Its ``close()`` runs when the stream closes.
    """

    def __init__(self, target: Any, name: str) -> None:
        self.target = target
        self.name = name
        self._queue: collections.deque[dict[str, Any] | None] = collections.deque()
        self._queued = 0
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def write(self, pid: int, pieces: Sequence[Piece]) -> int:
        data = b"".join(p.data for p in pieces)
        item = {"data": data, "pid": pid, "name": self.name, "timestamp": time.time()}
        with self._ready:
            if self._queued + len(data) > CUSTOM_QUEUE:
                return len(data)
            self._queue.append(item)
            self._queued += len(data)
            self._ready.notify()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"stream-{self.name}", daemon=True
            )
            self._thread.start()
        return 0

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                item = self._queue.popleft()
                if item is not None:
                    self._queued -= len(item["data"])
            if item is None:
                break
            try:
                self.target(item)
            except Exception:
                log.exception("%s stream %r failed", self.name, self.target)
        closer = getattr(self.target, "close", None)
        if callable(closer):
            closer()

    def close(self) -> None:
        with self._ready:
            self._queue.append(None)
            self._ready.notify()

    async def aclose(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self.close()
        await asyncio.get_running_loop().run_in_executor(
            None, thread.join, CLOSE_TIMEOUT
        )


_console: Console | None = None


# -- a watcher's stream --------------------------------------------------------


class OutputStream:
    """A watcher's stdout or stderr: its stream, and the count of drops."""

    def __init__(self, watcher: str, name: str, stream: Stream) -> None:
        self.watcher = watcher
        self.name = name
        self.stream = stream
        self._dropped: collections.Counter[int] = collections.Counter()
        self._reason = ""
        self._logged_at = -DROP_LOG_INTERVAL

    def write(self, pid: int, pieces: Sequence[Piece]) -> None:
        """Called by a process's pipe with what it just read."""
        try:
            dropped = self.stream.write(pid, pieces)
        except OSError as exc:
            dropped = sum(len(p.data) for p in pieces)
            self._reason = str(exc)
        if dropped:
            self._dropped[pid] += dropped
            if time.monotonic() - self._logged_at >= DROP_LOG_INTERVAL:
                self._log_drops()

    def _log_drops(self) -> None:
        self._logged_at = time.monotonic()
        reason = self._reason or "the stream cannot keep up"
        for pid, count in sorted(self._dropped.items()):
            log.warning(
                "dropped: %s %s pid=%d %d bytes (%s)",
                self.watcher,
                self.name,
                pid,
                count,
                reason,
            )
        self._dropped.clear()
        self._reason = ""

    async def close(self) -> None:
        if self._dropped:
            self._log_drops()
        await self.stream.aclose()


def open_stream(
    watcher: str, name: str, config: StreamConfig, search_path: Sequence[str] = ()
) -> OutputStream:
    """The stream a watcher's config asks for; ``StreamError`` if unusable."""
    where = f"{watcher}: {name}_stream ({config.cls or config.kind})"
    try:
        stream = _make(watcher, name, config, search_path)
    except OSError as exc:
        what = f"cannot open {exc.filename}" if exc.filename else "unusable"
        raise StreamError(f"{where}: {what}: {exc.strerror or exc}") from None
    except HookError as exc:
        raise StreamError(f"{where}: {exc}") from None
    return OutputStream(watcher, name, stream)


def _make(
    watcher: str, name: str, config: StreamConfig, search_path: Sequence[str]
) -> Stream:
    kind, filename = config.kind, config.filename or ""
    if kind == "file":
        return FileStream(
            filename,
            time_format=config.time_format,
            max_bytes=config.max_bytes,
            backup_count=config.backup_count,
        )
    if kind == "watched_file":
        return WatchedFileStream(filename, time_format=config.time_format)
    if kind == "timed_rotating_file":
        return TimedRotatingFileStream(
            filename,
            time_format=config.time_format,
            backup_count=config.backup_count,
            rotate_when=config.rotate_when or "H",
            rotate_interval=config.rotate_interval,
            utc=config.utc,
        )
    if kind == "stdout":
        return StdoutStream()
    if kind == "fancy_stdout":
        return FancyStdoutStream(
            watcher, color=config.color, time_format=config.time_format
        )
    return CustomStream(_custom_object(config.cls, config.options, search_path), name)


def _custom_object(
    target: str, options: Mapping[str, str], search_path: Sequence[str]
) -> Any:
    cls = import_target(target, search_path)
    try:
        obj = cls(**options)
    except Exception as exc:
        log.debug("%s(**%r) failed", target, dict(options), exc_info=True)
        raise HookError(f"{target}(...) raised {type(exc).__name__}: {exc}") from None
    if not callable(obj):
        raise HookError(f"{target} made {obj!r}, which cannot be called")
    return obj
