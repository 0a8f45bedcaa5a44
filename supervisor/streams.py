"""Where a watcher's output goes: ``stdout_stream.*`` and ``stderr_stream.*``.

The path of a byte. A child whose watcher has a stream writes into a pipe;
the arbiter reads the other end on its loop (``process.OutputPipe``), cuts
what it read into lines with a ``LineSplitter`` and hands them, one batch
per read, to the watcher's ``OutputStream``. The processes of one watcher
share it. A batch is written with one ``write``, so lines of two processes
never interleave mid-line.

Bounded memory. A line longer than ``MAX_LINE`` is cut into pieces as it
arrives, never held whole; juggler's own streams start each piece after the
first with ``CONTINUED``. Bytes are written as the child wrote them: nothing
is decoded, so no output is lost to an encoding error.

Never blocking the loop. Writes to a regular file land in the page cache.
The supervisor's stdout may be a pipe or a terminal that stops reading: it
is written without blocking, what does not fit waits in a bounded buffer,
and what does not fit there is dropped. A custom class runs in a thread of
its own behind a bounded queue. Dropped bytes are counted and logged, at
most once per ``DROP_LOG_INTERVAL`` for each watcher's stream, naming the
watcher and the pid.

Known shortcoming: this module holds the line splitting, the five built-in
classes and the custom-class adapter, past the 400 lines a module should
keep; the file classes would move to a ``stream_files`` module of their own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import socket
import stat
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from juggler.supervisor.config_model import StreamConfig
from juggler.supervisor.errors import SupervisorError
from juggler.supervisor.hooks import HookError, import_target

log = logging.getLogger("juggler.supervisor")

MAX_LINE = 64 * 1024
# The start of a piece that continues a line cut at MAX_LINE.
CONTINUED = b"[...] "
DROP_LOG_INTERVAL = 10.0
# Bytes for the supervisor's stdout waiting on a slow reader, and for a
# custom class waiting on its thread; past these, output is dropped.
CONSOLE_BUFFER = 4 * 1024 * 1024
CUSTOM_QUEUE = 8 * 1024 * 1024
# How often a watched file's path is compared with the file held open.
WATCH_INTERVAL = 1.0
CLOSE_TIMEOUT = 5.0


class StreamError(SupervisorError):
    """A stream cannot be set up: a file that cannot be opened, a bad class."""


# -- lines -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Piece:
    """Output of one process: whole lines, or one cut piece of a long line.

    ``data`` ends with ``\\n`` when its last line is whole; without it, the
    line was cut at ``MAX_LINE`` (or the process ended mid-line).
    ``continued``: the first line continues a piece that was cut.
    """

    data: bytes
    continued: bool = False


class LineSplitter:
    """Cuts a byte stream into ``Piece``s, holding at most ``max_line`` bytes."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._partial = b""
        self._continued = False

    def feed(self, data: bytes) -> list[Piece]:
        pieces: list[Piece] = []
        buffer = self._partial + data if self._partial else data
        end = buffer.rfind(b"\n") + 1
        if end:
            self._whole_lines(buffer[:end], pieces)
        rest = buffer[end:]
        while len(rest) > self.max_line:
            pieces.append(Piece(rest[: self.max_line], self._continued))
            self._continued = True
            rest = rest[self.max_line :]
        self._partial = rest
        return pieces

    def flush(self) -> list[Piece]:
        """What is left when the pipe closes: a last line without newline."""
        rest, self._partial = self._partial, b""
        continued, self._continued = self._continued, False
        return [Piece(rest, continued)] if rest else []

    def _whole_lines(self, block: bytes, pieces: list[Piece]) -> None:
        # Fast path: a block no longer than max_line holds no long line.
        if (
            len(block) <= self.max_line
            or max(map(len, block.split(b"\n"))) <= self.max_line
        ):
            pieces.append(Piece(block, self._continued))
            self._continued = False
            return
        for line in block[:-1].split(b"\n"):
            rest = line
            while len(rest) > self.max_line:
                pieces.append(Piece(rest[: self.max_line], self._continued))
                self._continued = True
                rest = rest[self.max_line :]
            pieces.append(Piece(rest + b"\n", self._continued))
            self._continued = False


def render(pieces: Sequence[Piece], prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """Pieces as juggler's streams write them: each line ends with a newline,
    starts with ``prefix`` (and ``CONTINUED`` if it continues a cut one)."""
    out = []
    for piece in pieces:
        body = piece.data[:-1] if piece.data.endswith(b"\n") else piece.data
        if piece.continued:
            body = CONTINUED + body
        if prefix or suffix:
            body = prefix + body.replace(b"\n", suffix + b"\n" + prefix) + suffix
        out.append(body + b"\n")
    return b"".join(out)


def time_prefix(time_format: str | None, pid: int) -> bytes:
    """``2024-05-01 12:00:00 [4312] | `` as Circus wrote it, or nothing."""
    if not time_format:
        return b""
    stamp = time.strftime(time_format)
    return f"{stamp} [{pid}] | ".encode(errors="replace")


# -- the stream classes --------------------------------------------------------


class Stream:
    """Where a batch of one process's output goes.

    ``write`` returns how many bytes it dropped (0: all written) and may
    raise ``OSError``; it runs on the arbiter's loop and must not block.
    """

    def write(self, pid: int, pieces: Sequence[Piece]) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file; a later ``write`` opens it again."""

    async def aclose(self) -> None:
        self.close()


class FileStream(Stream):
    """Appends to a file; rotates it at ``max_bytes`` keeping ``backup_count``.

    As in Python's RotatingFileHandler, rotation needs both numbers set.
    Rotation renames ``F`` to ``F.1`` (``F.1`` to ``F.2``...) and opens a
    new ``F`` between two writes, so no line is lost or cut by it; a line
    longer than ``max_bytes`` gets a file of its own.

    Known shortcoming: two streams on one file (two watchers, or a watcher
    and its successor during a reload) each count its size and rotate it
    on their own; sharing one ``FileStream`` per path would fix it.
    """

    def __init__(
        self,
        filename: str,
        *,
        time_format: str | None = None,
        max_bytes: int = 0,
        backup_count: int = 0,
    ) -> None:
        self.path = filename
        self.time_format = time_format
        self.max_bytes = max_bytes if backup_count > 0 else 0
        self.backup_count = backup_count
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o666)
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def write(self, pid: int, pieces: Sequence[Piece]) -> int:
        data = render(pieces, time_prefix(self.time_format, pid))
        self._before_write()
        if self.max_bytes:
            self._write_sized(data)
        else:
            self._write_all(data)
        return 0

    def _before_write(self) -> None:
        if self._fd < 0:
            self._open()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self._size += written
            view = view[written:]

    def _write_sized(self, data: bytes) -> None:
        while data:
            room = self.max_bytes - self._size
            if len(data) <= room:
                self._write_all(data)
                return
            # Whole lines that still fit; a line longer than max_bytes is
            # written alone into a fresh file.
            cut = data.rfind(b"\n", 0, max(room, 0)) + 1
            if not cut and self._size == 0:
                cut = data.find(b"\n") + 1 or len(data)
            if cut:
                self._write_all(data[:cut])
                data = data[cut:]
            if data:
                self.rotate()

    def rotate(self) -> None:
        self.close()
        for index in range(self.backup_count - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{index}", f"{self.path}.{index + 1}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, f"{self.path}.1")
        self._open()


class WatchedFileStream(FileStream):
    """A file that logrotate may move or delete: reopened at its path.

    The path is checked at most once per ``WATCH_INTERVAL``; lines written
    in between land in the moved file, so none is lost.
    """

    def __init__(self, filename: str, *, time_format: str | None = None) -> None:
        super().__init__(filename, time_format=time_format)
        self._checked = time.monotonic()

    def _before_write(self) -> None:
        super()._before_write()
        now = time.monotonic()
        if now - self._checked < WATCH_INTERVAL:
            return
        self._checked = now
        held = os.fstat(self._fd)
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        if current is None or (current.st_dev, current.st_ino) != (
            held.st_dev,
            held.st_ino,
        ):
            self.close()
            self._open()


# rotate_when -> (seconds, suffix of the rotated files), as Circus named them.
ROTATE_UNITS = {
    "S": (1, "%Y%m%d%H%M%S"),
    "M": (60, "%Y%m%d%H%M"),
    "H": (3600, "%Y%m%d%H"),
    "D": (86400, "%Y%m%d"),
    "MIDNIGHT": (86400, "%Y%m%d"),
    "W": (7 * 86400, "%Y%m%d"),
}


class TimedRotatingFileStream(FileStream):
    """Rotates every ``rotate_interval`` ``rotate_when``: ``F`` becomes
    ``F.<start of its period>``; only the newest ``backup_count`` are kept.

    Known shortcoming: a period is counted in seconds from the start of the
    previous one, so a daylight-saving change shifts ``midnight`` and
    weekly rotation by an hour until the next rotation.
    """

    def __init__(
        self,
        filename: str,
        *,
        time_format: str | None = None,
        backup_count: int = 0,
        rotate_when: str = "H",
        rotate_interval: int = 1,
        utc: bool = False,
    ) -> None:
        super().__init__(filename, time_format=time_format)
        self.backup_count = backup_count
        self.when = rotate_when.upper()
        unit = "W" if self.when.startswith("W") else self.when
        seconds, self.suffix = ROTATE_UNITS[unit]
        self.interval = seconds * max(1, rotate_interval)
        self.utc = utc
        self._started = os.fstat(self._fd).st_mtime if self._size else time.time()
        self._rotate_at = self._next_rotation(self._started)

    def _clock(self, when: float) -> time.struct_time:
        return time.gmtime(when) if self.utc else time.localtime(when)

    def _next_rotation(self, start: float) -> float:
        if self.when != "MIDNIGHT" and not self.when.startswith("W"):
            return start + self.interval
        t = self._clock(start)
        midnight = start + 86400 - (t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec)
        if self.when == "MIDNIGHT":
            return midnight
        days = (int(self.when[1]) - t.tm_wday - 1) % 7
        return midnight + days * 86400

    def _before_write(self) -> None:
        super()._before_write()
        now = time.time()
        if now >= self._rotate_at:
            self.rotate()
            self._started = now
            self._rotate_at = self._next_rotation(now)

    def rotate(self) -> None:
        self.close()
        base = f"{self.path}.{time.strftime(self.suffix, self._clock(self._started))}"
        target, n = base, 0
        while os.path.exists(target):  # never overwrite an older backup
            n += 1
            target = f"{base}-{n}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, target)
        self._delete_old()
        self._open()

    def _delete_old(self) -> None:
        if self.backup_count <= 0:
            return
        folder, name = os.path.split(os.path.abspath(self.path))
        rotated = re.compile(re.escape(name) + r"\.\d{8,14}(-\d+)?")
        backups = sorted(f for f in os.listdir(folder) if rotated.fullmatch(f))
        for old in backups[: -self.backup_count]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, old))


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
