"""What the figures were measured on: versions, cores, load, host."""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from typing import Any

PACKAGES = (
    "juggler",
    "gevent",
    "greenlet",
    "meinheld",
    "waitress",
    "uvicorn",
    "gunicorn",
    "uvicorn-worker",
    "circus",
    "chaussette",
    "psutil",
    "matplotlib",
)


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def tool_version(args: list[str]) -> str:
    """The first line a tool prints about itself (nginx -v writes stderr,
    wrk --version exits 1)."""
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError as exc:
        return f"unavailable: {exc}"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe(nginx: str, wrk: str) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "nginx": tool_version([nginx, "-v"]).removeprefix("nginx version: "),
        "wrk": tool_version([wrk, "--version"]).split(" Copyright")[0],
        "packages": package_versions(),
        "load_average_start": list(os.getloadavg()),
    }
