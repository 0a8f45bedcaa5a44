"""``python -m bench [--quick|--full] [--out DIR]``.

Runs the throughput rounds and the process-management rows, writes
``<date>-<host>.json`` (raw figures, versions, commands) and a Markdown
report next to it (with PNG charts when matplotlib is installed), and
prints the Markdown. Exit 0, or 1 when a configuration other than a
reference one failed (never because a ratio is low), 2 when nginx or wrk
is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import (
    estimate,
    management,
    reload,
    report,
    runs,
    summary,
    system,
    wrk,
)
from bench.micro import run as micro_run
from bench.profiles import PROFILES
from bench.stacks import REFERENCE_ONLY

log = logging.getLogger("bench")

EXIT_FAILED = 1
EXIT_MISSING_TOOL = 2
DEFAULT_OUT = Path(__file__).resolve().parent / "reports"
# The parts of a run, in the order they run; --skip leaves any of them out.
PARTS = ("throughput", "restart", "reload", "spawn", "micro")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="juggler against a bare parent, gunicorn and circus, "
        "behind a real nginx, measured with wrk.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--quick",
        dest="profile",
        action="store_const",
        const="quick",
        help="one round, hello world, four backends (the default; ~4 min)",
    )
    which.add_argument(
        "--full",
        dest="profile",
        action="store_const",
        const="full",
        help="five rounds, every workload and backend (about 2 h on 2 cores)",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="report folder")
    parser.add_argument("--rounds", type=int, help="override the profile's rounds")
    parser.add_argument("--duration", type=float, help="seconds per wrk run")
    parser.add_argument(
        "--skip",
        action="append",
        choices=PARTS,
        default=[],
        help="leave out a part of the run (repeatable); its rows are absent "
        "from the report, which says so",
    )
    parser.set_defaults(profile="quick")
    return parser


def find_tools() -> runs.Tools | str:
    """The tools, or the one line that says what is missing."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    found = wrk.wrk_binary()
    missing = [name for name, path in (("nginx", nginx), ("wrk", found)) if not path]
    if nginx is None or found is None:
        return (
            f"{' and '.join(missing)} not installed: the benchmark drives the "
            "real ones (apt-get install nginx wrk, or make sysdeps)"
        )
    return runs.Tools(nginx=nginx, wrk=found)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s bench[%(process)d] %(message)s",
        stream=sys.stderr,
    )
    tools = find_tools()
    if isinstance(tools, str):
        print(f"error: {tools}", file=sys.stderr)
        return EXIT_MISSING_TOOL
    profile = PROFILES[args.profile]
    if args.rounds is not None:
        profile = dataclasses.replace(profile, rounds=max(1, args.rounds))
    if args.duration is not None:
        profile = dataclasses.replace(profile, duration=args.duration)
    # SIGTERM unwinds like Ctrl-C, so that every started process is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    skipped = frozenset(args.skip)
    log.info("%s", estimate.estimate(profile, skipped).describe(profile))
    result = measure(profile, tools, skipped)
    text = write_reports(result, args.out)
    print(text)
    return EXIT_FAILED if failures(result) else 0


def measure(
    profile: Any, tools: runs.Tools, skipped: frozenset[str] = frozenset()
) -> dict[str, Any]:
    started = time.monotonic()
    meta = system.describe(tools.nginx, tools.wrk)
    predicted = estimate.estimate(profile, skipped).seconds
    throughput = [] if "throughput" in skipped else runs.run_rounds(profile, tools)
    process = [] if "restart" in skipped else management.run_restarts(profile, tools)
    process += [] if "reload" in skipped else reload.run_all(profile, tools)
    process += [] if "spawn" in skipped else management.run_spawn_idle(profile)
    micro = {} if "micro" in skipped else _micro(profile)
    meta["load_average_end"] = list(os.getloadavg())
    return {
        "meta": meta,
        "profile": profile.to_json(),
        "skipped": sorted(skipped),
        "estimated_seconds": predicted,
        "throughput": throughput,
        "process": process,
        "micro": micro,
        "wall_seconds": time.monotonic() - started,
    }


def _micro(profile: Any) -> dict[str, Any]:
    log.info("micro-benchmarks")
    tmp = tempfile.mkdtemp(prefix="juggler-bench-")
    try:
        return micro_run.run(tmp, profile.micro_max_time, profile.micro_min_rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def failures(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the product or a peer that errored (reference rows and
    counts refused for lack of memory are reported, not failed), and the
    micro-benchmarks when they failed."""
    rows = result["throughput"] + result["process"]
    micro = result.get("micro") or {}
    if micro.get("error"):
        rows = [*rows, {"config": "micro-benchmarks", "error": micro["error"]}]
    return [
        row
        for row in rows
        if row.get("error")
        and row["config"] not in REFERENCE_ONLY
        and not row.get("refused")
    ]


def write_reports(result: dict[str, Any], out: str) -> str:
    """Write the JSON, the charts and the Markdown; return the Markdown."""
    os.makedirs(out, exist_ok=True)
    now = datetime.datetime.now()
    stem = f"{now:%Y-%m-%d-%H%M}-{socket.gethostname()}"
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=1)
    charts = _charts(result, out, stem)
    text = report.render(result, charts)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(text)
    log.info("report: %s.{json,md} in %s", stem, out)
    return text


def _charts(result: dict[str, Any], out: str, stem: str) -> list[str]:
    try:
        from bench import charts

        summaries = summary.summarise(result["throughput"])
        return charts.draw(summaries, result["process"], out, stem)
    except ImportError:
        log.warning("no charts: matplotlib is not installed (the bench extra)")
        return []
