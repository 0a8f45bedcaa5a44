"""Running the micro-benchmarks from ``python -m bench`` and reading their
figures back.

pytest runs them in a child process with ``--benchmark-json``; the report
keeps, per benchmark, its median and interquartile range per call, the
rounds, what it measures (``extra_info["what"]``) and, for an adapter, the
median of the baseline it wraps (``extra_info["baseline"]``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TIMEOUT = 600.0

Row = dict[str, Any]


def command(json_path: str, max_time: float, min_rounds: int) -> list[str]:
    """pytest on this folder, each benchmark timed for about ``max_time``
    seconds (and at least ``min_rounds`` rounds)."""
    return [
        sys.executable,
        "-m",
        "pytest",
        str(HERE.relative_to(ROOT)),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={json_path}",
        f"--benchmark-max-time={max_time:g}",
        f"--benchmark-min-rounds={min_rounds}",
    ]


def run(tmp: str, max_time: float, min_rounds: int) -> Row:
    """Run them; ``error`` holds pytest's last lines when it failed."""
    json_path = os.path.join(tmp, "micro.json")
    args = command(json_path, max_time, min_rounds)
    try:
        done = subprocess.run(
            args,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"command": args, "error": f"took over {TIMEOUT:g}s", "benchmarks": []}
    error = None
    if done.returncode != 0:
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        error = f"pytest exited {done.returncode}: " + " | ".join(lines[-3:])
        log.warning("micro-benchmarks failed: %s", error)
    benchmarks: list[Row] = []
    if os.path.exists(json_path):
        with open(json_path) as f:
            benchmarks = parse(json.load(f))
    return {"command": args, "error": error, "benchmarks": benchmarks}


def parse(data: dict[str, Any]) -> list[Row]:
    """The report's figures from pytest-benchmark's JSON (seconds)."""
    rows = []
    for bench in data.get("benchmarks", []):
        stats, extra = bench["stats"], bench.get("extra_info", {})
        rows.append(
            {
                "name": bench["name"],
                "group": bench.get("group") or "supervisor",
                "what": extra.get("what", ""),
                "baseline": extra.get("baseline"),
                "median_s": float(stats["median"]),
                "iqr_s": float(stats["iqr"]),
                "rounds": int(stats["rounds"]),
            }
        )
    return rows


def over_baseline(rows: list[Row], row: Row) -> float | None:
    """Seconds a benchmark's median adds to its baseline's, if it has one."""
    by_name = {r["name"]: r for r in rows}
    base = by_name.get(row.get("baseline") or "")
    if base is None:
        return None
    return float(row["median_s"]) - float(base["median_s"])
