"""Faults: what juggler does when its processes, or juggler itself, die.

Each scenario breaks something for real -- a SIGKILL, an app that cannot
import, a process that ignores SIGTERM -- and measures how the stack comes
back, with the figures the issue sets:

1. a worker SIGKILLed under light load is replaced by its spare within
   milliseconds, and only the requests it held may fail;
2. an app that cannot load says why in one line, its watcher flaps and
   rests instead of looping, the supervisor stays idle, and the other
   watchers never notice;
3. a supervisor SIGKILLed takes every worker and whatever the workers
   started with it (the lifeline, supervisor/lifeline.py), and frees its
   port;
4. a worker that ignores SIGTERM is killed at its graceful timeout;
   ``juggler stop`` leaves no process, and juggler removes the socket files
   it made, never one it inherited;
5. mass deaths leave no zombie, and no signal ever reaches a reaped pid.

Resource faults (log floods, leaks, spawn failures) are in
test_resources.py.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import (
    SupervisorProcess,
    bind_unix,
    http_get,
    juggler_command,
    wait_for,
)
from proxy import Load, Nginx, free_port

from juggler.supervisor.flapping import FAST_DEATH_SECONDS

Started = Callable[..., SupervisorProcess]
Status = dict[str, Any]

WEB = """
[socket:web]
path = {tmp}/web.sock

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {apps}
args = reliability_app:app
copy_env = true
graceful_timeout = 5
"""


def processes(sup: SupervisorProcess, watcher: str) -> list[Status]:
    status: Status = sup.status()
    return list(status[watcher]["processes"])


def log_times(log: str, text: str) -> list[float]:
    """When each line of juggler's log holding ``text`` was written."""
    return [
        datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for line in log.splitlines()
        if text in line
    ]


def youngest(sup: SupervisorProcess, watcher: str) -> float:
    """The age of the youngest serving process, by juggler's clock (psutil's
    start times move with the wall clock, which may jump in a VM)."""
    serving = [p for p in processes(sup, watcher) if not p["spare"]]
    return min(float(p["age"]) for p in serving)


def gone(procs: list[psutil.Process]) -> bool:
    """Dead, whether reaped already or still a zombie of init."""
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def session(sid: int) -> list[psutil.Process]:
    """The live processes of a session: a supervisor, and all it started
    (the harness starts each supervisor in a session of its own)."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != "zombie":
                found.append(proc)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between the closest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- 1. worker SIGKILL under light load ----------------------------------------

KILLS = 20
LIGHT_CLIENTS = 2
# One worker and two spares. The kernel hands a new connection to the
# worker it likes (mostly the same idle one), so among several workers a
# probe could miss the replacement for seconds; with one, only the
# replacement can answer. With two spares, a kill never waits for a spare
# to boot.
SPARES = 2


def settled(sup: SupervisorProcess) -> bool:
    """One worker serving, and both spares booted to take over."""
    procs = processes(sup, "web")
    serving = [p for p in procs if not p["spare"] and p["ready"]]
    spares = [p for p in procs if p["spare"] and p["ready"]]
    return len(serving) == 1 and len(spares) == SPARES


def served_by_new_pid(address: str, old: int) -> bool:
    try:
        status, body = http_get(address, timeout=2.0)
    except OSError:
        return False
    return status == 200 and int(body) != old


def kill_and_time(sup: SupervisorProcess) -> float:
    """SIGKILL the worker; ms until another pid has answered a 200."""
    wait_for(lambda: settled(sup), timeout=10, message="worker and spares back")
    [victim] = sup.serving("web")
    # Deaths within FAST_DEATH_SECONDS of a start are backed off
    # (flapping.py): the crash of a worker that has served a while is the
    # case to measure.
    wait_for(
        lambda: youngest(sup, "web") > FAST_DEATH_SECONDS + 0.05,
        timeout=5,
        message="the worker's minimum age",
    )
    address = f"{sup.tmp}/web.sock"
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: served_by_new_pid(address, victim), timeout=10, interval=0)
    return (time.monotonic() - started) * 1000


def test_worker_sigkill_under_light_load(juggler: Started, cleanup, figures) -> None:
    sup = juggler(WEB + f"spare_processes = {SPARES}\n")
    nginx = Nginx(f"unix:{sup.tmp}/web.sock")
    cleanup.append(nginx)
    nginx.start()
    samples: list[float] = []
    failures: list[int] = []
    with Load(nginx.port, clients=LIGHT_CLIENTS, max_seconds=28) as load:
        for _ in range(KILLS):
            before = load.result.failed
            samples.append(kill_and_time(sup))
            failures.append(load.result.failed - before)
    result = load.result
    assert result.total > KILLS * 10, "the load did not run"

    figures.timing(
        "replacement serving, median of 20", statistics.median(samples), 100, "ms"
    )
    figures.timing("replacement serving, p95", percentile(samples, 95), 250, "ms")
    # Each client has one request in flight at a time, all on the one
    # worker: a kill can fail at most LIGHT_CLIENTS requests. (nginx may
    # also retry a request whose connection died before any answer.)
    figures.exact(
        "failures <= that worker's in-flight requests",
        f"{result.failed} failed of {result.total}, at most {max(failures)} "
        f"per kill; in flight at most {LIGHT_CLIENTS} per kill",
        max(failures) <= LIGHT_CLIENTS and result.failed <= KILLS * LIGHT_CLIENTS,
    )


# -- 2. crash loop -------------------------------------------------------------

CRASH_LOOP = (
    WEB
    + """
[watcher:broken]
cmd = runner serve --fd $(circus.sockets.web) --python-path {apps}
args = broken_import:app
copy_env = true
flapping.attempts = 3
flapping.window = 1
flapping.retry_in = 1
flapping.max_retry = -1

[watcher:crasher]
cmd = {python} -c "import sys; sys.exit(1)"
flapping.attempts = 3
flapping.window = 1
flapping.retry_in = 1
flapping.max_retry = -1
"""
)
CPU_WINDOW = 4.0
BROKEN_CAUSE = (
    'error: app module "broken_import" raised ModuleNotFoundError while '
    "importing: No module named 'module_that_does_not_exist_anywhere'"
)


def serve_while(address: str, seconds: float) -> tuple[int, int]:
    """GET ``address`` for ``seconds``; (answered, failed)."""
    answered = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ok = http_get(address, timeout=2.0)[0] == 200
        except OSError:
            ok = False
        answered += ok
        failed += not ok
        time.sleep(0.02)  # a probe, not a load: the CPU is the supervisor's
    return answered, failed


def episodes(log: str, name: str) -> tuple[list[int], list[float]]:
    """The spawns of each flapping episode, and the rests: seconds from a
    "flapping:" line to the next spawn."""
    spawns = log_times(log, f"spawned: {name}[")
    counts, rests = [], []
    start = 0.0
    for flap in log_times(log, f"flapping: {name} "):
        counts.append(sum(start <= t <= flap for t in spawns))
        later = [t for t in spawns if t > flap]
        if later:
            rests.append(later[0] - flap)
        start = flap
    return counts, rests


def test_crash_loop(juggler: Started, figures) -> None:
    sup = juggler(CRASH_LOOP)
    supervisor = psutil.Process(sup.pid)
    sup.wait_log("flapping: broken")
    serving = sup.serving("web")

    supervisor.cpu_percent()  # the window starts
    answered, failed = serve_while(f"{sup.tmp}/web.sock", CPU_WINDOW)
    cpu = supervisor.cpu_percent()
    log = sup.log()

    # The runner prints the user's traceback, then its one-line cause.
    causes = [line for line in log.splitlines() if line.startswith("error: ")]
    exits = log.count("exited: broken[")
    figures.exact(
        "an app that fails to load exits 4 with one line naming the app and "
        "the exception",
        f"{exits} exits, {log.count('status=4 (unexpected)')} with status=4, "
        f"each with one line: {sorted(set(causes))}",
        exits >= 2
        and log.count("status=4 (unexpected)") == exits
        and causes == [BROKEN_CAUSE] * exits,
    )
    check_flapping(sup, log, figures)
    figures.exact(
        "other watchers keep serving",
        f"{answered} answered, {failed} failed; web's pids "
        f"{'the same' if sup.serving('web') == serving else 'changed'}",
        failed == 0 and answered > 0 and sup.serving("web") == serving,
    )
    figures.timing("supervisor CPU stays low (4 s window)", cpu, 5.0, "%")


def check_flapping(sup: SupervisorProcess, log: str, figures) -> None:
    wait_for(
        lambda: sup.status()["broken"]["state"] == "flapping",
        timeout=5,
        message="broken marked flapping",
    )
    crasher, crasher_rests = episodes(log, "crasher")
    broken, broken_rests = episodes(log, "broken")
    # An app that failed to load (exit 4) would fail the same way again:
    # its watcher flaps at the first death instead of using its attempts.
    figures.exact(
        "the watcher is marked flapping after its attempts (3)",
        f"spawns per episode: crasher (exit 1) {crasher}, broken (exit 4) {broken}",
        len(crasher) >= 2
        and set(crasher) == {3}
        and len(broken) >= 2
        and set(broken) == {1},
    )
    rests = crasher_rests + broken_rests
    figures.exact(
        "backs off (retry_in = 1 s before the next spawn)",
        f"rested {min(rests):.3f} to {max(rests):.3f} s",
        min(rests) >= 0.99,  # the log's clock has milliseconds
    )


# -- 3. supervisor SIGKILL -----------------------------------------------------

ROUNDS = 10
TCP_WEB = """
[socket:web]
host = 127.0.0.1
port = %d

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {apps}
args = reliability_app:app
numprocesses = 2
copy_env = true
spare_processes = 0
"""


@dataclass
class KillRound:
    gone_ms: float  # every worker and app child dead
    bound_ms: float  # the port bound again
    workers: int
    children: int
    sid: int  # the supervisor's session


def rebindable(port: int) -> bool:
    """Whether a server could listen on the port again, as juggler would."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
    return True


def kill_all(procs: list[psutil.Process]) -> None:
    """Leave nothing behind, whatever a round found (psutil checks that a
    pid still names the process it did)."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue


def sigkill_round(juggler: Started) -> KillRound:
    port = free_port()
    sup = juggler(TCP_WEB % port)
    for _ in range(3):  # two sleeping children each
        assert http_get(("127.0.0.1", port), "/spawn?n=2")[0] == 200
    supervisor = psutil.Process(sup.pid)
    family = supervisor.children(recursive=True)
    workers = len(supervisor.children())
    try:
        started = time.monotonic()
        sup.signal(signal.SIGKILL)
        wait_for(lambda: gone(family), timeout=10, interval=0.002)
        all_gone = time.monotonic() - started
        wait_for(lambda: rebindable(port), timeout=10, interval=0.002)
        bound = time.monotonic() - started
    finally:
        kill_all(family)
    sup.wait()
    return KillRound(
        all_gone * 1000, bound * 1000, workers, len(family) - workers, sup.pid
    )


def test_supervisor_sigkill(juggler: Started, figures) -> None:
    rounds = [sigkill_round(juggler) for _ in range(ROUNDS)]
    figures.note(
        "processes per round (workers + app children)",
        ", ".join(f"{r.workers}+{r.children}" for r in rounds),
    )
    assert all(r.workers == 2 and r.children == 6 for r in rounds)
    figures.timing(
        "every worker and its children gone, median of 10",
        statistics.median(r.gone_ms for r in rounds),
        1000,
        "ms",
    )
    figures.timing(
        "the port re-bindable, slowest of 10",
        max(r.bound_ms for r in rounds),
        2000,
        "ms",
    )

    # The lifeline exits too, once every group it stopped is empty (a
    # zombie counts until init reaps it).
    def left() -> list[int]:
        return [p.pid for r in rounds for p in session(r.sid)]

    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not left(), timeout=10)
    figures.exact(
        "nothing left, the lifeline included",
        f"{len(left())} processes left in the {ROUNDS} supervisors' sessions",
        not left(),
    )


# -- 4. a worker that ignores SIGTERM ------------------------------------------

STUBBORN = """
[socket:web]
path = {tmp}/web.sock

[socket:inherited]
fd = %(fd)d

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {apps}
args = reliability_app:app
copy_env = true

[watcher:adopted]
cmd = runner serve --fd $(circus.sockets.inherited) --python-path {apps}
args = reliability_app:app
copy_env = true
spare_processes = 0

[watcher:stubborn]
cmd = {python} {apps}/stubborn.py
graceful_timeout = %(timeout)g
"""
GRACEFUL = 2.0


class InheritingSupervisor(SupervisorProcess):
    """A supervisor started with a listening socket already open, as
    systemd's socket activation starts one (``[socket:NAME] fd = N``)."""

    def __init__(self, config: str, inherited: int) -> None:
        super().__init__(config)
        self.inherited = inherited

    def start(self, wait: str | None = "started:", timeout: float = 20.0) -> None:
        bindir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*juggler_command(), self.config_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.tmp,
                start_new_session=True,
                pass_fds=(self.inherited,),
            )
        if wait:
            self.wait_log(wait, timeout=timeout)


@pytest.fixture
def inherited() -> Iterator[socket.socket]:
    """A UNIX listener the test binds, as systemd would bind one."""
    folder = tempfile.mkdtemp(prefix="juggler-inherited-")
    listener = bind_unix(os.path.join(folder, "inherited.sock"))
    yield listener
    listener.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_worker_ignoring_sigterm(inherited: socket.socket, cleanup, figures) -> None:
    inherited_path = inherited.getsockname()
    config = STUBBORN % {"fd": inherited.fileno(), "timeout": GRACEFUL}
    sup = InheritingSupervisor(config, inherited.fileno())
    cleanup.append(sup)
    sup.start()
    sup.wait_log("ready: stubborn[")
    sup.wait_log("(spare, waiting)")
    assert http_get(inherited_path)[0] == 200  # the adopted socket serves
    # Children of the app, which the runner leaves behind when it stops.
    assert http_get(f"{sup.tmp}/web.sock", "/spawn?n=2")[0] == 200
    stubborn = psutil.Process(sup.serving("stubborn")[0])
    family = psutil.Process(sup.pid).children(recursive=True)

    with ThreadPoolExecutor(1) as pool:
        stopping = pool.submit(sup.ctl, "stop")
        wait_for(lambda: gone([stubborn]), timeout=GRACEFUL + 5, interval=0.002)
        dead_at = time.time()
        done = stopping.result()
    [asked] = log_times(sup.log(), "stopping: stubborn[")
    figures.timing(
        f"killed at its graceful timeout ({GRACEFUL:g} s) +- 0.3 s: "
        f"killed after {dead_at - asked:.3f} s, off by",
        abs(dead_at - asked - GRACEFUL) * 1000,
        300,
        "ms",
    )
    left = [p.pid for p in family if not gone([p])]
    figures.exact(
        "`juggler stop` exits 0 with no process left",
        f"exit {done.returncode}; {len(family)} processes before (4 workers, "
        f"2 app children), left {left}",
        done.returncode == 0 and not left and len(family) == 6,
    )

    assert sup.ctl("quit").returncode == 0
    code = sup.wait(timeout=10)
    wait_for(lambda: not session(sup.pid), timeout=5, message="session empty")
    own = os.path.exists(f"{sup.tmp}/web.sock")
    kept = os.path.exists(inherited_path)
    figures.exact(
        "own UNIX socket files removed, inherited ones kept",
        f"juggler exit {code}; its web.sock {'left' if own else 'removed'}, "
        f"the inherited (fd) one {'kept' if kept else 'removed'}",
        code == 0 and not own and kept,
    )


# -- 5. mass deaths ------------------------------------------------------------

MASS = """
[watcher:many]
cmd = sh -c "sleep 60 & sleep 60 & wait"
numprocesses = 50
check_flapping = false
graceful_timeout = 2
"""
MASS_ROUNDS = 5
ZOMBIE_DEADLINE = 2.0


def proc_state(pid: int) -> str | None:
    """The state letter in /proc/PID/stat (``Z``: a zombie), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):  # reaped meanwhile
        return None
    return stat.rpartition(")")[2].split()[0]


def zombies(supervisor: int) -> list[int]:
    """The supervisor's children that died and are not reaped."""
    children = [p.pid for p in psutil.Process(supervisor).children()]
    return [pid for pid in children if proc_state(pid) == "Z"]


def in_proc(pids: list[int]) -> list[int]:
    """Those still in /proc: running, dying, or zombies nobody reaped."""
    return [pid for pid in pids if proc_state(pid) is not None]


def pidfds(pid: int) -> int:
    """How many pidfds the process holds."""
    folder = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(folder):
        try:
            count += os.readlink(f"{folder}/{fd}") == "anon_inode:[pidfd]"
        except FileNotFoundError:
            continue
    return count


@dataclass
class MassRound:
    workers: int
    children: int
    reaped_ms: float  # every worker reaped by juggler (inf: not in 2 s)
    init_ms: float  # every app child reaped by init


def mass_round(sup: SupervisorProcess) -> MassRound:
    """Kill every worker and app child at once; time their reaping."""
    wait_for(
        lambda: youngest(sup, "many") > FAST_DEATH_SECONDS + 0.05,
        timeout=5,
        message="workers old enough not to be backed off",
    )
    workers = sup.serving("many")
    children = [
        p.pid
        for p in psutil.Process(sup.pid).children(recursive=True)
        if p.pid not in workers
    ]
    started = time.monotonic()
    for pid in workers:
        os.killpg(pid, signal.SIGKILL)  # the worker and its two children
    try:
        wait_for(
            lambda: not in_proc(workers) and not zombies(sup.pid),
            timeout=ZOMBIE_DEADLINE,
            interval=0.002,
        )
        reaped_ms = (time.monotonic() - started) * 1000
    except TimeoutError:
        reaped_ms = float("inf")
    # Orphans the moment their worker died: init reaps the app children,
    # on its own schedule.
    wait_for(lambda: not in_proc(children), timeout=10, interval=0.002)
    init_ms = (time.monotonic() - started) * 1000
    wait_for(lambda: len(sup.serving("many")) == 50, message="50 respawned")
    return MassRound(len(workers), len(children), reaped_ms, init_ms)


def test_mass_deaths(juggler: Started, figures) -> None:
    sup = juggler(MASS)
    wait_for(lambda: len(sup.serving("many")) == 50, message="50 workers")
    rounds = []
    refused = reached = 0
    for _ in range(MASS_ROUNDS):
        before = sup.serving("many")
        rounds.append(mass_round(sup))
        # A reaped pid is unknown to juggler: a signal to it is refused.
        done = sup.ctl("signal", "many", str(before[0]), "SIGCONT")
        refused += done.returncode != 0 and "no process with pid" in done.stderr
        reached += sup.ctl_json("signal", "many", "SIGCONT") == 50
    figures.note(
        "killed at once per round (workers + app children)",
        ", ".join(f"{r.workers}+{r.children}" for r in rounds),
    )
    assert all(r.workers == 50 and r.children == 100 for r in rounds)
    slowest = max(r.reaped_ms for r in rounds)
    figures.exact(
        "0 zombies after 2 s (the supervisor's children)",
        "all 50 reaped in " + ", ".join(f"{r.reaped_ms:.0f}" for r in rounds) + " ms",
        slowest <= ZOMBIE_DEADLINE * 1000,
    )
    # This sandbox's init reaps orphans every 2 s or so; systemd, tini or
    # docker --init do it at once.
    figures.timing(
        "0 zombies after 2 s (app children, reaped by init), slowest",
        max(r.init_ms for r in rounds),
        ZOMBIE_DEADLINE * 1000,
        "ms",
    )
    # Signals go through pidfd_send_signal on a pidfd closed at the reap
    # (process.py): one pidfd per live child is all juggler can signal.
    held, children = pidfds(sup.pid), len(sup.children())
    figures.exact(
        "no signal ever sent to a reaped pid",
        f"signal to a reaped pid refused {refused}/{MASS_ROUNDS}; a signal "
        f"to the watcher reached the 50 live ones {reached}/{MASS_ROUNDS}; "
        f"pidfds held {held} for {children} children",
        refused == reached == MASS_ROUNDS and held == children,
    )
