"""Starting and stopping the process trees the benchmark runs.

Every command starts in its own session. ``stop_tree`` signals the whole
group, escalates to SIGKILL after a deadline, and then kills by pid every
descendant it saw before, because supervisors (juggler, circus) put their
workers in process groups of their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

import psutil


def start(
    args: Sequence[str],
    log_path: str,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.Popen[bytes]:
    """``args`` in a new session, its output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def children(pid: int) -> list[psutil.Process]:
    """The direct children of ``pid`` (none once it is gone)."""
    try:
        return psutil.Process(pid).children()
    except psutil.Error:
        return []


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def stop_tree(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM ``proc``'s group, SIGKILL it after ``timeout``; then SIGKILL
    any descendant seen before that is still alive (psutil checks that a
    pid still names the same process before it signals it)."""
    seen = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _kill_leftovers(seen, timeout)
    return code


def _kill_leftovers(seen: list[psutil.Process], timeout: float) -> None:
    alive = [p for p in seen if p.is_running()]
    _, alive = psutil.wait_procs(alive, timeout=min(timeout, 5.0))
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout)


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.01
) -> object:
    """Poll ``condition`` until truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not seen within {timeout:g}s")
        time.sleep(interval)


def log_tail(path: str, lines: int = 3) -> str:
    """The last lines of a log, joined on one line for a report cell."""
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])
