"""Resources: floods, leaks and exhausted limits never take juggler down.

6. A worker floods its stdout (50 MiB, with a 10 MiB line and no newline
   in it) while an ``events`` subscriber stops reading: the writer never
   waits, juggler's memory stays bounded, the long line arrives cut into
   marked pieces, and the stalled subscriber holds up nothing else.
7. After 500 respawns, 200 control connections and 20 reloads, juggler
   holds as many descriptors as before and hardly more memory.
8. Spawns that fail for want of descriptors (EMFILE) or processes (EAGAIN)
   leave juggler up and answering, log one line per back-off step, and
   heal on their own once the limit is lifted.

Process faults (kills, crash loops) are in test_faults.py.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import json
import os
import resource
import socket
import termios
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
from harness import SupervisorProcess, wait_for

from juggler.supervisor.stream_lines import CONTINUED, MAX_LINE

Started = Callable[..., SupervisorProcess]


class ControlClient:
    """One connection to a supervisor's control socket, kept open."""

    def __init__(self, sup: SupervisorProcess) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(sup.endpoint.removeprefix("unix://"))
        self.reader = self.sock.makefile("rb")

    def send(self, command: str, **args: object) -> None:
        line = json.dumps({"command": command, "args": args}) + "\n"
        self.sock.sendall(line.encode())

    def call(self, command: str, **args: object) -> Any:
        self.send(command, **args)
        reply = json.loads(self.reader.readline())
        assert reply["ok"], reply
        return reply.get("result")

    def unread(self) -> int:
        """Bytes the supervisor sent that this end has not read yet."""
        size = array.array("i", [0])
        fcntl.ioctl(self.sock, termios.FIONREAD, size)
        return size[0]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


# -- 6. log flood ----------------------------------------------------------------

FLOOD = """
[watcher:out]
cmd = {python} {apps}/output_writer.py flood {tmp}
graceful_timeout = 5
stdout_stream.class = FileStream
stdout_stream.filename = {tmp}/out.log

[watcher:churn]
cmd = sleep 60
numprocesses = 0
graceful_timeout = 2
"""
LONG_LINE = 10 * 1024 * 1024
FLOOD_BOUND = 15.0
CHURN, CHURN_ROUNDS = 50, 6


class EventCounter:
    """An ``events`` subscriber that reads everything, in a thread."""

    def __init__(self, sup: SupervisorProcess) -> None:
        self.client = ControlClient(sup)
        self.client.call("events")
        self.count = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while self.client.reader.readline():
                self.count += 1

    def stop(self) -> None:
        self.client.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=5)
        self.client.close()


class RssPeak:
    """The supervisor's peak RSS, sampled in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.peak = self.process.memory_info().rss
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stopped.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> float:
        """Stop sampling; return the growth in MiB."""
        self.stopped.set()
        self.thread.join(timeout=5)
        return (self.peak - self.baseline) / 2**20


@dataclass
class Churn:
    unread: list[int]  # bytes the stalled subscriber holds, round by round
    seen: list[int]  # events the reading subscriber got, round by round
    latencies: list[float]  # of each incr and decr, in ms


def churn(
    control: ControlClient, stalled: ControlClient, counter: EventCounter
) -> Churn:
    """Events by the hundred: CHURN processes spawned, ready, stopped."""
    done = Churn([], [], [])
    for _ in range(CHURN_ROUNDS):
        for command in ("incr", "decr"):
            started = time.monotonic()
            control.call(command, name="churn", nb=CHURN)
            done.latencies.append((time.monotonic() - started) * 1000)
        done.unread.append(stalled.unread())
        done.seen.append(counter.count)
    return done


def read_tail(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8))
            return f.read()
    except FileNotFoundError:
        return b""


def long_line_pieces(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return [line for line in f if line.startswith((b"L", CONTINUED + b"L"))]


def test_log_flood(juggler: Started, cleanup, figures) -> None:
    sup = juggler(FLOOD)
    sup.wait_log("ready: out[")
    stalled = ControlClient(sup)
    stalled.send("events")  # and never read a byte
    counter = EventCounter(sup)
    cleanup.append(counter)
    control = ControlClient(sup)
    rss = RssPeak(sup.pid)

    started = time.monotonic()
    open(f"{sup.tmp}/go", "w").close()
    churned = churn(control, stalled, counter)
    wait_for(
        lambda: os.path.exists(f"{sup.tmp}/done"),
        timeout=FLOOD_BOUND * 4,
        interval=0.005,
        message="the writer done",
    )
    flood_s = time.monotonic() - started
    wait_for(lambda: read_tail(f"{sup.tmp}/out.log") == b"the end\n", timeout=10)
    grown = rss.stop()
    status_started = time.monotonic()
    control.call("status")
    status_ms = (time.monotonic() - status_started) * 1000
    control.close()
    stalled.close()

    figures.timing(
        "a worker writing 50 MiB never blocks (written in)", flood_s, FLOOD_BOUND, "s"
    )
    figures.timing("supervisor RSS grows <= 16 MiB", grown, 16, "MiB")
    check_long_line(f"{sup.tmp}/out.log", figures)
    # Saturated: what it holds stopped growing while the events went on
    # reaching the subscriber that reads.
    unread, seen = churned.unread, churned.seen
    figures.exact(
        "a stalled log subscriber never blocks anything",
        f"the stalled one holds {unread[-1]} bytes (full since round "
        f"{unread.index(unread[-1]) + 1} of {CHURN_ROUNDS}), the reading one "
        f"got {seen[-1]} events; incr/decr of {CHURN} took at most "
        f"{max(churned.latencies):.0f} ms, status then {status_ms:.1f} ms",
        unread[-1] == unread[-2] > 0 and seen[-1] > seen[-2],
    )


def check_long_line(path: str, figures) -> None:
    pieces = long_line_pieces(path)
    rebuilt = b"".join(p.removeprefix(CONTINUED).rstrip(b"\n") for p in pieces)
    figures.exact(
        "over-long lines are split and marked",
        f"the 10 MiB line came as {len(pieces)} lines of <= {MAX_LINE} bytes, "
        f"all but the first starting {CONTINUED.decode()!r}",
        rebuilt == b"L" * LONG_LINE
        and len(pieces) == LONG_LINE // MAX_LINE
        and all(len(p) <= MAX_LINE + len(CONTINUED) + 1 for p in pieces)
        and not pieces[0].startswith(CONTINUED)
        and all(p.startswith(CONTINUED) for p in pieces[1:]),
    )


# -- 7. leak soak ----------------------------------------------------------------

# Processes that live just past FAST_DEATH_SECONDS (flapping.py): each exit
# is respawned at once, never backed off, so 60 of them give some 50
# respawns a second. A command that exits at once would be backed off to a
# respawn every 5 s.
SOAK = """
[watcher:churn]
cmd = sleep 1.1
numprocesses = 60
check_flapping = false
graceful_timeout = 2
"""
RESPAWNS, CONNECTIONS, RELOADS = 500, 200, 20


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def restarts(control: ControlClient) -> int:
    return int(control.call("status")["churn"]["restarts"])


def soak(
    sup: SupervisorProcess, control: ControlClient, respawns: int
) -> tuple[int, int, int]:
    """Control connections and reloads while processes respawn, until
    each has reached its count; how many of each were done."""
    first = restarts(control)
    connections = reloads = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for _ in range(min(10, CONNECTIONS - connections)):
            client = ControlClient(sup)
            client.call("status")
            client.close()
            connections += 1
        if reloads < RELOADS:
            control.call("reloadconfig")
            reloads += 1
        done = restarts(control) - first
        if done >= respawns and (connections, reloads) == (CONNECTIONS, RELOADS):
            break
        time.sleep(0.05)  # the respawns go on by themselves
    return restarts(control) - first, connections, reloads


def stopped_usage(control: ControlClient, pid: int) -> tuple[int, int]:
    """The supervisor's descriptors and RSS, its watcher stopped."""
    control.call("stop", name="churn")
    return open_fds(pid), psutil.Process(pid).memory_info().rss


def test_leak_soak(juggler: Started, figures) -> None:
    sup = juggler(SOAK)
    control = ControlClient(sup)
    # A first round runs every path once, so that lazy imports and caches
    # are in the baseline instead of counting as a leak.
    soak(sup, control, respawns=60)
    base_fds, base_rss = stopped_usage(control, sup.pid)
    control.call("start", name="churn")

    done = soak(sup, control, respawns=RESPAWNS)
    fds, rss = stopped_usage(control, sup.pid)
    control.close()
    figures.note(
        "respawns, control connections, reloads done",
        f"{done[0]}, {done[1]}, {done[2]}",
    )
    assert done[0] >= RESPAWNS and done[1:] == (CONNECTIONS, RELOADS)
    figures.exact(
        "the supervisor's fd count back to baseline +- 2",
        f"{base_fds} before, {fds} after",
        abs(fds - base_fds) <= 2,
    )
    figures.timing("RSS + <= 5 MiB", (rss - base_rss) / 2**20, 5, "MiB")


# -- 8. spawn failure ------------------------------------------------------------

SPAWN_FAILURE = """
[watcher:files]
cmd = sleep 60
max_retry = -1
graceful_timeout = 2

[watcher:nobody]
cmd = sleep 60
uid = nobody
max_retry = -1
graceful_timeout = 2
"""
# Back-off steps to see before the limit is lifted: 0.1, 0.2, 0.4, 0.8 s.
STEPS = 4


@dataclass
class SpawnFailure:
    lines: list[str]  # the log's "spawn failed" lines
    answered: list[bool]  # status on an open connection, at each step
    cli_ms: float  # `juggler status` on a new connection, from the lowering
    lowered_ms: float  # how long the limit stayed lowered
    recovered_ms: float  # from the lift to the spawn that worked


def lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(fd for fd in range(len(used) + 1) if fd not in used)


def failure_lines(log: str, watcher: str) -> list[str]:
    return [line for line in log.splitlines() if f"spawn failed: {watcher}[" in line]


def retry_delays(lines: list[str]) -> list[float]:
    return [float(line.rpartition("retrying in ")[2].rstrip("s")) for line in lines]


def cli_status(sup: SupervisorProcess, since: float) -> float:
    """``juggler status`` on a new connection: ms from ``since`` to its
    answer."""
    done = sup.ctl("status")
    assert done.returncode == 0, done.stderr
    return (time.monotonic() - since) * 1000


def spawn_failure(
    sup: SupervisorProcess,
    control: ControlClient,
    watcher: str,
    limit: tuple[int, tuple[int, int]],
) -> SpawnFailure:
    """Fail ``watcher``'s spawns under ``limit`` (a resource and its
    limits) for STEPS back-off steps, then lift it."""
    which, lowered = limit
    before = resource.prlimit(sup.pid, which)
    resource.prlimit(sup.pid, which, lowered)
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        try:
            control.call("incr", name=watcher)
            cli = pool.submit(cli_status, sup, started)
            answered = []
            for _ in range(STEPS):
                sup.wait_log(f"spawn failed: {watcher}[", count=len(answered) + 1)
                answered.append(len(control.call("status")) == 2)
        finally:
            resource.prlimit(sup.pid, which, before)
        lifted = time.monotonic()
        wait_for(lambda: len(sup.serving(watcher)) == 2, message="recovered")
        recovered = time.monotonic()
        cli_ms = cli.result()
    return SpawnFailure(
        failure_lines(sup.log(), watcher),
        answered,
        cli_ms,
        (lifted - started) * 1000,
        (recovered - lifted) * 1000,
    )


def test_spawn_failure(juggler: Started, figures) -> None:
    sup = juggler(SPAWN_FAILURE)
    control = ControlClient(sup)
    control.call("status")  # accepted: it needs no descriptor from here on
    # EMFILE: no descriptor free below the limit (each spawn makes pipes).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = (resource.RLIMIT_NOFILE, (lowest_free_fd(sup.pid), hard))
    emfile = spawn_failure(sup, control, "files", nofile)
    # EAGAIN: the kernel refuses to exec a process over its user's process
    # limit once it has become that user (root itself is never limited).
    # The soft limit only: raising a hard one back needs CAP_SYS_RESOURCE.
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    eagain = spawn_failure(sup, control, "nobody", (resource.RLIMIT_NPROC, (0, hard)))
    control.close()

    for name, failure in (("EMFILE", emfile), ("EAGAIN", eagain)):
        report_spawn_failure(sup, name, failure, figures)
    log = sup.log()
    accept_errors = log.count("out of system resource") + log.count(
        "control: cannot accept"
    )
    figures.exact(
        "EMFILE: a connection the control channel cannot accept is logged "
        "once, not once per retry",
        f"{accept_errors} lines, {log.count('Traceback')} tracebacks",
        accept_errors == 1 and "Traceback" not in log,
    )


def report_spawn_failure(
    sup: SupervisorProcess, name: str, failure: SpawnFailure, figures
) -> None:
    lines = failure.lines
    delays = retry_delays(lines)
    figures.exact(
        f"{name}: the supervisor stays up, answers the control channel",
        f"status answered {sum(failure.answered)}/{STEPS} times on an open "
        f"connection while failing; on a new connection, "
        f"{failure.cli_ms:.0f} ms after the lowering (lifted at "
        f"{failure.lowered_ms:.0f} ms)",
        all(failure.answered) and sup.proc is not None and sup.proc.poll() is None,
    )
    cause = os.strerror(getattr(errno, name))
    figures.exact(
        f"{name}: logs one line per back-off step",
        f"{len(lines)} lines, retrying in {delays} s; the first: "
        f"{lines[0].partition('spawn failed: ')[2]}",
        delays == pytest.approx([0.1 * 2**step for step in range(STEPS)])
        and all(cause in line for line in lines),
    )
    # The next attempt comes at the next back-off step, 1.6 s at most.
    figures.exact(
        f"{name}: recovers once the limit is lifted",
        f"{failure.recovered_ms:.0f} ms after the lift",
        failure.recovered_ms <= 0.1 * 2**STEPS * 1000 + 500,
    )
