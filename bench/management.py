"""Process-management rows: juggler against gunicorn and circus.

- restart: under a light load through nginx, SIGKILL the oldest serving
  worker and time until a worker that was not serving before answers its
  first 200 (the bench app names its pid in ``X-Pid``): a promoted spare
  under juggler, a fork under gunicorn, a new exec under circus (see
  control.py). The probe opens a fresh connection per request straight on
  the socket, back to back; which worker accepts a connection is the
  kernel's choice, so the figure includes a little of that race (a few
  probes at most, well under a millisecond each). Each kill waits until
  every worker (and spare) is back and ready, and until the victim is
  MIN_VICTIM_AGE old: juggler backs off a respawn after deaths within 1 s
  of a start, so kills in quick succession would measure the back-off
  instead of the respawn. Crashes of
  workers that have served a while are the case the row is about.
- spawn: from the supervisor's exec until N processes are its children.
  juggler and circus spawn ``sleep``; gunicorn can only spawn its own
  workers, so its processes are idle sync workers of the bench app.
- idle: supervisor CPU % and RSS over a window while those processes sleep.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
from typing import Any

import psutil

from bench import control, probe
from bench.children import wait_until
from bench.nginx import Nginx, NginxError
from bench.profiles import Profile
from bench.runs import SupervisorUsage, Tools
from bench.stacks import REFERENCE_ONLY, Context, Stack, StackError

log = logging.getLogger("bench")

SUPERVISORS = ("juggler", "gunicorn", "circus")
# What one gunicorn worker of the bench app holds, to refuse a count that
# would not fit in memory instead of swapping the machine to death.
GUNICORN_WORKER_MIB = 25
KILL_DEADLINE = 30.0
MIN_VICTIM_AGE = 1.5

Row = dict[str, Any]


class LightLoad:
    """One keep-alive client through nginx, back to back, until stopped
    (and in any case after ``max_seconds``)."""

    def __init__(self, port: int, max_seconds: float = 600.0) -> None:
        self.port = port
        self.deadline = time.monotonic() + max_seconds
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> LightLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            try:
                conn.request("GET", "/")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.close()


def restart_plan(profile: Profile) -> list[tuple[str, str]]:
    """(supervisor, backend) of every restart row."""
    circus = profile.reference_restart_backends
    return [
        (config, backend)
        for backend in profile.process_backends
        for config in SUPERVISORS
        if config not in REFERENCE_ONLY or circus is None or backend in circus
    ]


def run_restarts(profile: Profile, tools: Tools) -> list[Row]:
    rows = []
    for config, backend in restart_plan(profile):
        log.info("restart: %s with %s", config, backend)
        rows.append(measure_restart(config, backend, profile, tools))
    return rows


def run_spawn_idle(profile: Profile) -> list[Row]:
    rows = []
    for count in profile.idle_counts:
        for config in SUPERVISORS:
            log.info("spawn and idle: %s with %d processes", config, count)
            rows.append(measure_spawn_idle(config, count, profile))
    return rows


def measure_restart(config: str, backend: str, profile: Profile, tools: Tools) -> Row:
    tmp = tempfile.mkdtemp(prefix="juggler-bench-")
    workers = os.cpu_count() or 1
    stack = Stack(config, Context(tmp), backend, f"unix:{tmp}/web.sock", workers)
    nginx: Nginx | None = None
    samples: list[float] = []
    row: Row = {"measure": "restart", "config": config, "backend": backend}
    try:
        stack.start()
        nginx = Nginx(tools.nginx, tmp, stack.upstream)
        nginx.start()
        spares = control.expected_spares(stack)
        row["mechanism"] = control.restart_mechanism(config, spares)
        with LightLoad(nginx.port):
            for _ in range(profile.kills):
                samples.append(kill_once(stack, spares))
        row["error"] = None
    except (StackError, NginxError, TimeoutError, OSError, psutil.Error) as exc:
        log.warning("restart %s with %s failed: %s", config, backend, exc)
        row["error"] = str(exc)
    finally:
        if nginx is not None:
            nginx.stop()
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    row["command"] = stack.command
    return {**row, **summarise(samples)}


def kill_once(stack: Stack, spares: int) -> float:
    """SIGKILL the oldest serving worker; ms until a worker that was not
    serving before (a promoted spare, a fork, a new exec) has served a 200."""
    wait_until(
        lambda: control.settled(stack, spares), KILL_DEADLINE, "all workers back"
    )
    victim = control.oldest(control.serving(stack))
    wait_until(
        lambda: time.time() - victim.create_time() >= MIN_VICTIM_AGE,
        KILL_DEADLINE,
        "the victim's minimum age",
    )
    old = {w.pid for w in control.serving(stack)}
    started = time.monotonic()
    victim.kill()
    wait_until(
        lambda: _served_by_new_pid(stack, old),
        KILL_DEADLINE,
        "a new worker's first 200",
        interval=0,
    )
    return (time.monotonic() - started) * 1000


def _served_by_new_pid(stack: Stack, old: set[int]) -> bool:
    control.alive_or_raise(stack)
    try:
        status, pid = probe.get(stack.address, timeout=2.0)
    except OSError:
        return False
    return status == 200 and pid is not None and pid not in old


def summarise(samples: list[float]) -> Row:
    if not samples:
        return {"samples_ms": [], "median_ms": None, "p95_ms": None}
    return {
        "samples_ms": [round(s, 3) for s in samples],
        "median_ms": statistics.median(samples),
        "p95_ms": percentile(samples, 95),
    }


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between the closest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def measure_spawn_idle(config: str, count: int, profile: Profile) -> Row:
    row: Row = {"measure": "spawn_idle", "config": config, "processes": count}
    refusal = too_big(config, count)
    if refusal:
        return {**row, "error": refusal, "refused": True, "spawn_s": None}
    tmp = tempfile.mkdtemp(prefix="juggler-bench-")
    upstream = f"unix:{tmp}/web.sock"
    stack = Stack(config, Context(tmp), "-", upstream, count, sleeping=True)
    try:
        stack.start(timeout=max(60.0, count * 0.2))
        row["spawn_s"] = stack.up_at - stack.started_at
        with SupervisorUsage(stack.supervisor_pid) as usage:
            # A measurement window, not a wait for something to happen.
            time.sleep(profile.idle_window)
        row.update(usage.to_json(), error=None)
    except (StackError, OSError) as exc:
        log.warning("spawn %s x%d failed: %s", config, count, exc)
        row.update(error=str(exc), spawn_s=None)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    row["command"] = stack.command
    return row


def too_big(config: str, count: int) -> str | None:
    """Why ``count`` processes of ``config`` are not run, if they are not."""
    if config != "gunicorn":
        return None
    need = count * GUNICORN_WORKER_MIB * 2**20
    available = psutil.virtual_memory().available
    if need <= available // 2:
        return None
    return (
        f"not run: {count} gunicorn workers (about {GUNICORN_WORKER_MIB} MiB "
        f"each, {need / 2**30:.0f} GiB) exceed half of the "
        f"{available / 2**30:.0f} GiB available; gunicorn spawns only workers"
    )
