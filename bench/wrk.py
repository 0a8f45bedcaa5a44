"""wrk as the load generator: its command line and its ``--latency`` text.

The figures come from wrk's own summary: requests/s, the 50 % and 99 %
lines of the latency distribution, socket errors (connect, read, write,
timeout) and the non-2xx/3xx count.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

THREADS = 2
CONNECTIONS = 64
POST_BYTES = 16 * 1024

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"^\s*(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in", re.M)
_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")

POST_SCRIPT = f"""
wrk.method = "POST"
wrk.body = string.rep("x", {POST_BYTES})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


class WrkError(Exception):
    """wrk failed, or printed something that is not its summary."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, as wrk summarised it."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    socket_errors: int
    non2xx: int

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non2xx

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def command(
    url: str, duration: float, script: str | None = None, binary: str = "wrk"
) -> list[str]:
    """``wrk -t2 -c64 -dNs --latency [-s SCRIPT] URL`` (wrk reads whole
    seconds only)."""
    seconds = max(1, round(duration))
    args = [binary, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s"]
    args.append("--latency")
    if script:
        args += ["-s", script]
    return [*args, url]


def write_post_script(directory: str) -> str:
    path = os.path.join(directory, "post.lua")
    with open(path, "w") as f:
        f.write(POST_SCRIPT)
    return path


def parse(text: str) -> WrkResult:
    """The figures of a ``wrk --latency`` summary."""
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    if rps is None or total is None:
        raise WrkError(f"no wrk summary in: {_tail(text)}")
    latency = {int(p): float(v) * _UNITS[u] for p, v, u in _DURATION.findall(text)}
    if 50 not in latency or 99 not in latency:
        raise WrkError(f"no latency distribution in: {_tail(text)}")
    sockets = _SOCKET.search(text)
    non2xx = _NON2XX.search(text)
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=latency[50],
        p99_ms=latency[99],
        requests=int(total.group(1)),
        socket_errors=sum(map(int, sockets.groups())) if sockets else 0,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
    )


def run(args: list[str], duration: float) -> WrkResult:
    """Run wrk to the end (bounded well past its own duration) and parse it."""
    return finish(start(args), duration)


def start(args: list[str]) -> subprocess.Popen[str]:
    """wrk in the background, in its own session, its output kept."""
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], duration: float) -> WrkResult:
    """Wait for a started wrk (killing it past ``duration + 30`` s)."""
    try:
        out, err = proc.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise WrkError(f"wrk did not finish within {duration + 30:g}s") from None
    if proc.returncode != 0:
        raise WrkError(f"wrk exited {proc.returncode}: {_tail(err)}")
    return parse(out)


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:]) if lines else "(nothing)"
