"""Per-process figures for ``juggler stats`` and ``top``, read with psutil.

``StatsSampler.sample`` runs in executor threads (psutil reads /proc, which
may be slow on a loaded host), so it is thread-safe: one lock guards the
cache of psutil handles. A handle is kept from one call to the next
because CPU % is a difference between two readings; a process seen for the
first time is measured over ``PRIME_INTERVAL`` instead of reporting 0.0.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

# How long a first measurement of a process's CPU lasts, in seconds.
PRIME_INTERVAL = 0.1
# Two readings closer than this give a noisy CPU %: the last one is reused.
MIN_INTERVAL = 0.05


class Process(Protocol):
    """What is sampled: a watcher's process (``process.Process``)."""

    @property
    def pid(self) -> int: ...

    @property
    def wid(self) -> int: ...

    def age(self) -> float: ...


@dataclass
class _Handle:
    process: Process  # the watcher's object: a reused pid gets a new handle
    psutil: psutil.Process
    cpu: float = 0.0
    measured_at: float = 0.0


class StatsSampler:
    """Samples processes, keeping a psutil handle per live process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}

    def sample(
        self, wanted: Sequence[tuple[str, Process]], live: Iterable[Process]
    ) -> list[dict[str, Any]]:
        """Rows for ``wanted`` (watcher name, process); ``live`` is every
        process of every watcher: handles of the others are kept."""
        with self._lock:
            self._prune(live)
            self._prime([process for _, process in wanted])
            rows = [self._row(name, process) for name, process in wanted]
        return [row for row in rows if row is not None]

    def _prune(self, live: Iterable[Process]) -> None:
        keep = {process.pid: process for process in live}
        for pid, handle in list(self._handles.items()):
            if keep.get(pid) is not handle.process:
                del self._handles[pid]

    def _prime(self, processes: list[Process]) -> None:
        """Start a CPU measurement of each new process; wait it out once."""
        fresh = False
        for process in processes:
            if process.pid in self._handles:
                continue
            try:
                handle = psutil.Process(process.pid)
                handle.cpu_percent(None)
            except psutil.Error:
                continue  # it died while we looked
            self._handles[process.pid] = _Handle(process, handle, 0.0, time.monotonic())
            fresh = True
        if fresh:
            time.sleep(PRIME_INTERVAL)

    def _row(self, watcher: str, process: Process) -> dict[str, Any] | None:
        handle = self._handles.get(process.pid)
        if handle is None:
            return None
        try:
            with handle.psutil.oneshot():
                return {
                    "watcher": watcher,
                    "wid": process.wid,
                    "pid": process.pid,
                    "age": round(process.age(), 3),
                    "cpu": self._cpu(handle),
                    "rss": handle.psutil.memory_info().rss,
                    "threads": handle.psutil.num_threads(),
                    "open_files": handle.psutil.num_fds(),
                    # Every socket it holds, listening and UNIX ones included.
                    "connections": len(handle.psutil.net_connections(kind="all")),
                }
        except psutil.Error:
            del self._handles[process.pid]
            return None  # it died while we looked

    @staticmethod
    def _cpu(handle: _Handle) -> float:
        now = time.monotonic()
        if now - handle.measured_at >= MIN_INTERVAL:
            handle.cpu = handle.psutil.cpu_percent(None)
            handle.measured_at = now
        return handle.cpu
