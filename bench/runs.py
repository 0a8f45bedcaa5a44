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
from bench.stacks import CONFIGS, REFERENCE_ONLY, Context, Stack, StackError

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
    """Every cell of one round. The ceiling answers the 13-byte hello only;
    the reference rows serve ``reference_workloads`` when the profile says."""
    cells = []
    for transport, workloads in _transports(profile):
        configs: tuple[str, ...] = CONFIGS
        backends = profile.backends
        if transport == "tcp":
            configs = profile.tcp_configs
            backends = _kept(profile.backends, profile.tcp_backends)
        if "hello" in workloads and "ceiling" in configs:
            cells.append(Cell("ceiling", "-", transport, ("hello",)))
        for backend in backends:
            for config in configs:
                chosen = _workloads_of(config, workloads, profile)
                if config != "ceiling" and chosen:
                    cells.append(Cell(config, backend, transport, chosen))
    return cells


def _workloads_of(
    config: str, workloads: tuple[str, ...], profile: Profile
) -> tuple[str, ...]:
    if config not in REFERENCE_ONLY:
        return workloads
    return _kept(workloads, profile.reference_workloads)


def _kept(items: tuple[str, ...], only: tuple[str, ...] | None) -> tuple[str, ...]:
    """``items`` in their order, those in ``only`` (all when it is None)."""
    return items if only is None else tuple(i for i in items if i in only)


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
            _measure(
                cell,
                workload,
                stack=stack,
                nginx=nginx,
                profile=profile,
                tools=tools,
                warmup=profile.warmup if i == 0 else warmup_next(profile),
            )
            for i, workload in enumerate(cell.workloads)
        ]
    except (StackError, NginxError, OSError) as exc:
        log.warning("%s failed: %s", cell.label, exc)
        return [_row(cell, w, stack, nginx, error=str(exc)) for w in cell.workloads]
    finally:
        if nginx is not None:
            nginx.stop()
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def warmup_next(profile: Profile) -> float:
    """The warm-up before a cell's later workloads."""
    return profile.warmup if profile.warmup_next is None else profile.warmup_next


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
    warmup: float,
) -> Row:
    url = f"http://127.0.0.1:{nginx.port}{WORKLOAD_PATHS[workload]}"
    script = wrk.write_post_script(stack.ctx.tmp) if workload == "post" else None
    warming = wrk.command(url, warmup, script, tools.wrk)
    measured = wrk.command(url, profile.duration, script, tools.wrk)
    try:
        wrk.run(warming, warmup)
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
