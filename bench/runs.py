"""Throughput rounds: every configuration once per round, behind nginx.

A *cell* is one configuration for one backend and one transport; it is
started once per round and serves every workload of the round in turn, each
after a warm-up run whose figures are thrown away. A cell that fails to
start still yields one row per workload, carrying its error: no row is ever
dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import psutil

from bench import wrk
from bench.nginx import Nginx, NginxError, free_port
from bench.profiles import WORKLOAD_PATHS, Profile
from bench.stacks import CONFIGS, Context, Stack, StackError

log = logging.getLogger("bench")

Row = dict[str, Any]


@dataclass(frozen=True)
class Cell:
    """One configuration to measure: (config, backend, transport)."""

    config: str
    backend: str
    transport: str
    workloads: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.config}/{self.backend}/{self.transport}"


@dataclass(frozen=True)
class Tools:
    """The external programs every round drives."""

    nginx: str
    wrk: str


def plan(profile: Profile) -> list[Cell]:
    """Every cell of one round. The ceiling answers the 13-byte hello only."""
    cells = []
    for transport, workloads in _transports(profile):
        if "hello" in workloads:
            cells.append(Cell("ceiling", "-", transport, ("hello",)))
        for backend in profile.backends:
            for config in CONFIGS[1:]:
                cells.append(Cell(config, backend, transport, workloads))
    return cells


def _transports(profile: Profile) -> list[tuple[str, tuple[str, ...]]]:
    found = [("unix", profile.workloads)]
    if profile.tcp_workloads:
        found.append(("tcp", profile.tcp_workloads))
    return found


def run_rounds(profile: Profile, tools: Tools) -> list[Row]:
    """All rounds, interleaved; each round starts one cell further along so
    that no configuration always runs first (or last) in a round."""
    cells = plan(profile)
    rows: list[Row] = []
    for number in range(profile.rounds):
        shift = number % len(cells)
        for cell in cells[shift:] + cells[:shift]:
            log.info("round %d: %s", number + 1, cell.label)
            for row in run_cell(cell, profile, tools):
                rows.append({"round": number + 1, **row})
    return rows


def run_cell(cell: Cell, profile: Profile, tools: Tools) -> list[Row]:
    tmp = tempfile.mkdtemp(prefix="juggler-bench-")
    workers = 0 if cell.config == "ceiling" else os.cpu_count() or 1
    stack = Stack(
        cell.config, Context(tmp), cell.backend, _upstream(cell, tmp), workers
    )
    nginx: Nginx | None = None
    try:
        stack.start()
        upstream = None if cell.config == "ceiling" else stack.upstream
        nginx = Nginx(tools.nginx, tmp, upstream)
        nginx.start()
        return [
            _measure(cell, w, stack=stack, nginx=nginx, profile=profile, tools=tools)
            for w in cell.workloads
        ]
    except (StackError, NginxError, OSError) as exc:
        log.warning("%s failed: %s", cell.label, exc)
        return [_row(cell, w, stack, nginx, error=str(exc)) for w in cell.workloads]
    finally:
        if nginx is not None:
            nginx.stop()
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _upstream(cell: Cell, tmp: str) -> str:
    if cell.transport == "unix":
        return f"unix:{tmp}/web.sock"
    return f"127.0.0.1:{free_port()}"


def _measure(
    cell: Cell,
    workload: str,
    *,
    stack: Stack,
    nginx: Nginx,
    profile: Profile,
    tools: Tools,
) -> Row:
    url = f"http://127.0.0.1:{nginx.port}{WORKLOAD_PATHS[workload]}"
    script = wrk.write_post_script(stack.ctx.tmp) if workload == "post" else None
    warmup = wrk.command(url, profile.warmup, script, tools.wrk)
    measured = wrk.command(url, profile.duration, script, tools.wrk)
    try:
        wrk.run(warmup, profile.warmup)
        with SupervisorUsage(stack.supervisor_pid) as usage:
            result = wrk.run(measured, profile.duration)
    except wrk.WrkError as exc:
        return _row(cell, workload, stack, nginx, error=str(exc), wrk_args=measured)
    row = _row(cell, workload, stack, nginx, wrk_args=measured)
    row.update(result.to_json())
    row.update(usage.to_json())
    return row


def _row(
    cell: Cell,
    workload: str,
    stack: Stack,
    nginx: Nginx | None,
    *,
    error: str | None = None,
    wrk_args: list[str] | None = None,
) -> Row:
    return {
        "config": cell.config,
        "backend": cell.backend,
        "transport": cell.transport,
        "workload": workload,
        "workers": stack.workers,
        "error": error,
        "commands": {
            "stack": stack.command,
            "nginx": nginx.command if nginx else None,
            "wrk": wrk_args,
        },
        "files": stack.files(),
    }


class SupervisorUsage:
    """CPU % and RSS of the supervisor process alone (not its workers)
    over a ``with`` block: the product claim is that it does no work per
    request."""

    def __init__(self, pid: int | None) -> None:
        self.process: psutil.Process | None = None
        with contextlib.suppress(psutil.Error):
            self.process = psutil.Process(pid) if pid else None
        self.cpu_pct: float | None = None
        self.rss_mib: float | None = None
        self._cpu = 0.0
        self._wall = 0.0

    def __enter__(self) -> SupervisorUsage:
        if self.process is not None:
            with contextlib.suppress(psutil.Error):
                self._cpu = _cpu_seconds(self.process)
        self._wall = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        with contextlib.suppress(psutil.Error):
            wall = time.monotonic() - self._wall
            self.cpu_pct = 100 * (_cpu_seconds(self.process) - self._cpu) / wall
            self.rss_mib = self.process.memory_info().rss / 2**20

    def to_json(self) -> dict[str, float | None]:
        return {"supervisor_cpu_pct": self.cpu_pct, "supervisor_rss_mib": self.rss_mib}


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)
