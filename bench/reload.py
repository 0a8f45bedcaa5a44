"""Rolling reload under load, through nginx: juggler against gunicorn and
circus.

One stack per supervisor and backend, behind nginx. After a warm-up, wrk
runs for ``reload_duration`` seconds at 64 connections twice: once
undisturbed (the baseline), then again while the supervisor is told to
reload ``reloads`` times, evenly spaced in the run (see control.py for the
command each one gets). The row reports the failed requests of the second
run (wrk's socket errors, timeouts included, plus non-2xx answers, which
is what nginx turns a refused or cut upstream into: 502) and its req/s
against the baseline's: the dip. It also times each reload, from the
command until every serving worker is a new one (the old ones gone).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any

from bench import control, wrk
from bench.children import wait_until
from bench.nginx import Nginx, NginxError
from bench.profiles import Profile
from bench.runs import Tools
from bench.stacks import REFERENCE_ONLY, Context, Stack, StackError

log = logging.getLogger("bench")

SUPERVISORS = ("juggler", "gunicorn", "circus")
TURNOVER_TIMEOUT = 120.0

Row = dict[str, Any]


def run_all(profile: Profile, tools: Tools) -> list[Row]:
    rows = []
    for backend in profile.reload_backends:
        for config in SUPERVISORS:
            log.info("reload under load: %s with %s", config, backend)
            rows.append(measure_reload(config, backend, profile, tools))
    return rows


def schedule(duration: float, reloads: int) -> list[float]:
    """Seconds into the run at which each reload starts: evenly spaced,
    none at the very start or end."""
    return [duration * (i + 1) / (reloads + 1) for i in range(reloads)]


def measure_reload(config: str, backend: str, profile: Profile, tools: Tools) -> Row:
    tmp = tempfile.mkdtemp(prefix="juggler-bench-")
    workers = os.cpu_count() or 1
    stack = Stack(config, Context(tmp), backend, f"unix:{tmp}/web.sock", workers)
    nginx: Nginx | None = None
    row: Row = {
        "measure": "reload",
        "config": config,
        "backend": backend,
        "reloads": profile.reloads,
        "duration": profile.reload_duration,
    }
    try:
        stack.start()
        nginx = Nginx(tools.nginx, tmp, stack.upstream)
        nginx.start()
        row.update(_runs(stack, nginx, profile, tools), error=None)
    except (StackError, NginxError, wrk.WrkError, TimeoutError, OSError) as exc:
        log.warning("reload %s with %s failed: %s", config, backend, exc)
        row["error"] = str(exc)
    finally:
        if nginx is not None:
            nginx.stop()
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    row["command"] = stack.command
    row["reference"] = config in REFERENCE_ONLY
    return row


def _runs(stack: Stack, nginx: Nginx, profile: Profile, tools: Tools) -> Row:
    url = f"http://127.0.0.1:{nginx.port}/"
    duration = profile.reload_duration
    args = wrk.command(url, duration, binary=tools.wrk)
    wrk.run(wrk.command(url, profile.warmup, binary=tools.wrk), profile.warmup)
    baseline = wrk.run(args, duration)
    log.info(
        "reload: baseline %.0f req/s, now %d reload(s)", baseline.rps, profile.reloads
    )
    during, reloads = _run_with_reloads(stack, args, duration, profile.reloads)
    return {
        **summarise(baseline, during),
        **reloads,
        "commands": {
            "stack": stack.command,
            "nginx": nginx.command,
            "wrk": args,
            "reload": control.reload_command(stack) or ["kill", "-HUP", "MASTER"],
        },
    }


def _run_with_reloads(
    stack: Stack, args: list[str], duration: float, reloads: int
) -> tuple[wrk.WrkResult, Row]:
    """wrk in the background while the reloads happen on schedule."""
    proc = wrk.start(args)
    started = time.monotonic()
    at: list[float] = []
    took: list[float] = []
    try:
        for offset in schedule(duration, reloads):
            # A planned moment in the run, not a wait for a condition.
            time.sleep(max(0.0, started + offset - time.monotonic()))
            at.append(time.monotonic() - started)
            took.append(reload_once(stack))
        result = wrk.finish(proc, duration)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    late = [a + t for a, t in zip(at, took, strict=True) if a + t > duration]
    return result, {
        "reload_at_s": [round(a, 3) for a in at],
        "reload_s": [round(t, 3) for t in took],
        "outlasted_run": bool(late),
    }


def reload_once(stack: Stack) -> float:
    """Reload; seconds until every serving worker is new and the old gone."""
    old = {w.pid for w in control.workers(stack)}
    started = time.monotonic()
    control.reload(stack)
    wait_until(
        lambda: turned_over(control.workers(stack), old, stack.workers),
        TURNOVER_TIMEOUT,
        "every worker replaced after a reload",
        interval=0.02,
    )
    return time.monotonic() - started


def turned_over(found: list[control.Worker], old: set[int], workers: int) -> bool:
    """No process from before is left, and ``workers`` new ones serve."""
    if any(w.pid in old for w in found):
        return False
    return len([w for w in found if w.ready and not w.spare]) >= workers


def summarise(baseline: wrk.WrkResult, during: wrk.WrkResult) -> Row:
    """The row's figures from the two wrk runs."""
    dip = None
    if baseline.rps > 0:
        dip = 100 * (1 - during.rps / baseline.rps)
    return {
        "baseline": baseline.to_json(),
        "during": during.to_json(),
        "rps_baseline": baseline.rps,
        "rps": during.rps,
        "dip_pct": dip,
        "failed": during.errors,
        "p99_ms": during.p99_ms,
        "p99_ms_baseline": baseline.p99_ms,
    }
