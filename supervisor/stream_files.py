"""Output streams that write to files: plain, rotated by size, reopened
after logrotate moved the file, rotated by time.

Each holds one descriptor opened with O_APPEND; writes land in the page
cache, so they never hold the arbiter's loop for long. Rotation happens
between two writes, so no line is lost or cut by it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Sequence

from juggler.supervisor.stream_lines import Piece, Stream, render, time_prefix

# How often a watched file's path is compared with the file held open.
WATCH_INTERVAL = 1.0


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
