"""Load and lifecycle: what a reload, a drain and a worker's death cost.

Each scenario runs a real ``juggler`` with two ``runner`` workers (the
wsgiref backend) on a UNIX socket, and real clients, through a real nginx
where users would have one. They show that:

- three rolling reloads under 64 connections fail no request and never
  leave fewer ready workers than configured, with keep-alive on (clients
  and nginx reuse their connections) and off (every request opens a
  connection of its own, from the client to nginx and from nginx to the
  socket);
- a reload lets the requests in flight finish, cuts one that outlasts
  ``graceful_timeout`` at that timeout, and never holds up a restart of
  another watcher;
- a reload to an app that no longer imports fails no request, keeps the
  old workers, and says why in one line;
- connections queued in the socket's backlog while every worker is frozen
  survive the workers' death and are answered by their successors: the
  backlog belongs to the supervisor's socket, not to a worker;
- the kernel spreads the connections of 64 clients over the workers.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest
from harness import APPS_DIR, SupervisorProcess, wait_for
from proxy import Load, LoadResult, Nginx

WORKERS = 2  # the cores of the machines this suite runs on
CONFIG = """
[socket:web]
path = {tmp}/web.sock
backlog = 512

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {tmp}
args = --python-path {apps} %(app)s
numprocesses = %(workers)d
copy_env = true
graceful_timeout = %(graceful)g
"""
OTHER = """
[socket:other]
path = {tmp}/other.sock

[watcher:other]
cmd = runner serve --fd $(circus.sockets.other) --python-path {apps} hello:app
numprocesses = 1
copy_env = true
"""
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.MULTILINE)


# -- the stack -----------------------------------------------------------------


def start_supervisor(
    cleanup: list[object],
    app: str = "reliability_app:app",
    *,
    graceful: float = 10,
    extra: str = "",
    copy_as: str | None = None,
) -> SupervisorProcess:
    """juggler serving ``app`` on {tmp}/web.sock with WORKERS runners.

    With ``copy_as``, the reliability app is copied into the supervisor's
    {tmp} as that module first; {tmp} is on the workers' path before
    tests/apps, and a scenario may then change the copy.
    """
    config = CONFIG % {"app": app, "workers": WORKERS, "graceful": graceful}
    sup = SupervisorProcess(config + extra)
    cleanup.append(sup)
    if copy_as is not None:
        target = os.path.join(sup.tmp, f"{copy_as}.py")
        shutil.copy(APPS_DIR / "reliability_app.py", target)
    sup.start()
    sup.wait_log("ready: web[", count=WORKERS)
    return sup


def start_nginx(
    cleanup: list[object], sup: SupervisorProcess, keepalive: int = 32
) -> Nginx:
    nginx = Nginx(f"unix:{sup.tmp}/web.sock", keepalive=keepalive)
    cleanup.append(nginx)
    nginx.start()
    return nginx


def processes(sup: SupervisorProcess, watcher: str = "web") -> list[dict[str, object]]:
    return sup.status()[watcher]["processes"]  # type: ignore[index, no-any-return]


def ready_workers(found: list[dict[str, object]]) -> int:
    """Processes that accept: ready, not a spare, not told to stop."""
    return sum(1 for p in found if p["ready"] and not p["spare"] and not p["stopping"])


class ReadyFloor:
    """Samples ``status`` in a thread; keeps the fewest ready workers seen."""

    def __init__(self, sup: SupervisorProcess, interval: float = 0.02) -> None:
        self.sup = sup
        self.interval = interval
        self.fewest: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            ready = ready_workers(processes(self.sup))
            self.samples += 1
            self.fewest = ready if self.fewest is None else min(self.fewest, ready)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class UnixConnection(http.client.HTTPConnection):
    """An HTTP client connection to a UNIX socket path."""

    def __init__(self, path: str, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class UnixLoad(Load):
    """``proxy.Load`` straight to the workers' UNIX socket, no nginx."""

    def __init__(
        self, path: str, clients: int, max_seconds: float, *, keepalive: bool
    ) -> None:
        super().__init__(0, clients, max_seconds, keepalive=keepalive)
        self.path = path

    def connection(self) -> http.client.HTTPConnection:
        return UnixConnection(self.path)


def failures(result: LoadResult, nginx: Nginx | None = None) -> str:
    """The count of failed requests, and what they were if any."""
    if not result.failed:
        return f"0 of {result.total}"
    seen = f"{dict(result.statuses)} errors {dict(result.errors)}"
    errors = nginx.errors()[-400:] if nginx is not None else ""
    return f"{result.failed} of {result.total}: {seen} {errors}"


def log_time(sup: SupervisorProcess, text: str) -> float:
    """The wall-clock time of the first log line that contains ``text``."""
    for line in sup.log().splitlines():
        stamp = LOG_TIME.match(line)
        if stamp and text in line:
            moment = datetime.datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f")
            return moment.timestamp()
    raise AssertionError(f"no {text!r} in the log:\n{sup.log()}")


# -- 1. rolling reloads under load ---------------------------------------------

LOAD_SECONDS = 20
RELOADS = 3


@pytest.mark.parametrize("keepalive", [True, False], ids=["keepalive", "close"])
def test_rolling_reloads_under_load(figures, cleanup, keepalive):
    sup = start_supervisor(cleanup)
    nginx = start_nginx(cleanup, sup, keepalive=32 if keepalive else 0)
    floor = ReadyFloor(sup)
    cleanup.append(floor)
    took: list[float] = []
    with Load(nginx.port, 64, max_seconds=28, keepalive=keepalive) as load:
        started = time.monotonic()
        wait_for(lambda: load.result.total > 200, message="load flowing")
        for i in range(RELOADS):
            # The planned moments of the run, not a wait for a condition.
            at = started + LOAD_SECONDS * (i + 1) / (RELOADS + 1)
            time.sleep(max(0.0, at - time.monotonic()))
            took.append(reload_web(sup))
        time.sleep(max(0.0, started + LOAD_SECONDS - time.monotonic()))
    floor.stop()
    result = load.result

    figures.note(
        "requests",
        f"{result.total} in {time.monotonic() - started:.1f} s, "
        f"reloads took {', '.join(f'{t:.2f}' for t in took)} s",
    )
    figures.exact(
        "0 failed requests",
        failures(result, nginx),
        result.failed == 0 and result.total > 0,
    )
    bad_gateway = result.statuses[502] + result.statuses[504]
    figures.exact("0 x 502/504", bad_gateway, bad_gateway == 0)
    figures.exact(
        "never fewer ready workers than configured",
        f"fewest {floor.fewest} of {WORKERS} in {floor.samples} samples",
        floor.fewest is not None and floor.fewest >= WORKERS and floor.samples > 100,
    )


def reload_web(sup: SupervisorProcess) -> float:
    """``juggler reload web``; its duration, once every worker is new."""
    before = set(sup.serving("web"))
    started = time.monotonic()
    done = sup.ctl("reload", "web")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert not before & set(sup.serving("web")), "old workers left after a reload"
    return elapsed


# -- 2. drain -------------------------------------------------------------------

GRACEFUL = 4.0
SHORT_REQUESTS = 16


class Request(threading.Thread):
    """One GET on its own UNIX connection: its status and when it ended."""

    def __init__(self, path: str, target: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.target = target
        self.status: int | None = None
        self.error: str | None = None
        self.ended = 0.0  # wall clock, to compare with the supervisor's log
        self.client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.client.settimeout(25)
        self.client.connect(path)

    def run(self) -> None:
        data = b""
        try:
            self.client.sendall(
                f"GET {self.target} HTTP/1.1\r\nHost: t\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            while chunk := self.client.recv(65536):
                data += chunk
        except OSError as exc:
            self.error = type(exc).__name__
        self.ended = time.time()
        self.client.close()
        if data.startswith(b"HTTP/1.1 "):
            self.status = int(data.split(b" ", 2)[1])


def accepted(pid: int, path: str, listener: int) -> int:
    """Connections ``pid`` accepted on the listener at ``path``.

    The listener, descriptor ``listener`` in every worker, has the path too.
    """
    try:
        found = psutil.Process(pid).net_connections(kind="unix")
    except psutil.NoSuchProcess:
        return 0
    return sum(1 for c in found if c.laddr == path and c.fd != listener)


def listener_fd(sup: SupervisorProcess, name: str = "web") -> int:
    """The descriptor of the socket ``name`` in the supervisor, and so in
    the workers, which inherit it under the same number."""
    found = sup.ctl_json("listsockets")
    [fd] = [s["fd"] for s in found if s["name"] == name]  # type: ignore[attr-defined]
    return int(fd)


def test_drain_across_a_reload(figures, cleanup):
    sup = start_supervisor(cleanup, graceful=GRACEFUL, extra=OTHER)
    sup.wait_log("ready: other[")
    path = f"{sup.tmp}/web.sock"
    serving = sup.serving("web")
    fd = listener_fd(sup)

    def in_flight() -> int:
        return sum(accepted(pid, path, fd) for pid in serving)

    # The long request first, alone, so that its worker is known.
    long_request = Request(path, f"/sleep?s={GRACEFUL * 4:g}")
    long_request.start()
    wait_for(in_flight, message="the long request accepted")
    [holder] = [pid for pid in serving if accepted(pid, path, fd)]
    short = [Request(path, "/sleep?s=3") for _ in range(SHORT_REQUESTS)]
    for request in short:
        request.start()
    wait_for(lambda: in_flight() == SHORT_REQUESTS + 1, message="all in flight")

    reload_done: list[subprocess.CompletedProcess[str]] = []
    reload = threading.Thread(
        target=lambda: reload_done.append(sup.ctl("reload", "web"))
    )
    reload.start()
    wait_for(lambda: draining(sup), message="a web worker draining")
    started = time.monotonic()
    other = sup.ctl("restart", "other")
    other_took = time.monotonic() - started
    reload_busy = reload.is_alive()
    for request in [*short, long_request]:
        request.join(timeout=20)
    reload.join(timeout=20)

    answered = sum(1 for r in short if r.status == 200)
    figures.exact(
        "16 requests of 3 s in flight across a reload all get 200",
        f"{answered}/{SHORT_REQUESTS} "
        f"({[r.status or r.error for r in short if r.status != 200]})",
        answered == SHORT_REQUESTS,
    )
    cut = long_request.ended - log_time(sup, f" pid={holder} with SIGTERM")
    figures.exact(
        "a request longer than graceful_timeout is cut",
        f"status {long_request.status}, {long_request.error or 'closed'}",
        long_request.status is None and f"pid={holder} after graceful" in sup.log(),
    )
    figures.note("cut after the stop", f"{cut:.3f} s (graceful_timeout {GRACEFUL:g} s)")
    figures.timing(
        "cut at graceful_timeout ± 0.5 s (distance from it)",
        abs(cut - GRACEFUL) * 1000,
        500,
    )
    figures.exact(
        "restart of another watcher while web drains",
        f"exit {other.returncode}, reload still running: {reload_busy}",
        other.returncode == 0 and reload_busy,
    )
    figures.timing(
        "meanwhile a restart of another watcher completes within 1 s",
        other_took * 1000,
        1000,
    )
    [done] = reload_done
    assert done.returncode == 0, done.stderr


def draining(sup: SupervisorProcess) -> bool:
    """A web worker (not a spare) has been told to stop."""
    return any(p["stopping"] and not p["spare"] for p in processes(sup))


# -- 3. a reload to an app that no longer imports ------------------------------

BROKEN = {
    "import-error": "raise ImportError('broken on purpose')\n",
    "syntax-error": "def app(environ, start_response:\n",
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_reload_to_an_app_that_fails_to_import(figures, cleanup, breakage):
    sup = start_supervisor(cleanup, "changing_app:app", copy_as="changing_app")
    nginx = start_nginx(cleanup, sup)
    before = sup.serving("web")
    with Load(nginx.port, 16, max_seconds=25) as load:
        wait_for(lambda: load.result.total > 200, message="load flowing")
        with open(os.path.join(sup.tmp, "changing_app.py"), "w") as f:
            f.write(BROKEN[breakage])
        done = sup.ctl("reload", "web")
        reloaded = load.result.total
        wait_for(lambda: load.result.total > reloaded + 200, message="load after")
    result = load.result

    figures.exact(
        "0 failed requests",
        failures(result, nginx),
        result.failed == 0 and result.total > 0,
    )
    answered_by = sorted(int(pid) for pid in result.pids)
    figures.exact(
        "the old processes keep serving",
        f"serving {sup.serving('web')}, answered by {answered_by}, before {before}",
        sup.serving("web") == before
        and len(answered_by) > 0
        # Only they answered: no replacement served a request, ever.
        and set(answered_by) <= set(before),
    )
    lines = done.stderr.splitlines()
    figures.exact(
        "the command exits non-zero with a one-line cause",
        f"exit {done.returncode}: {done.stderr.strip()!r}",
        done.returncode != 0
        and len(lines) == 1
        and "exited with status=4 (app failed to load)" in lines[0],
    )


# -- 4. the backlog outlives the workers ---------------------------------------

QUEUED = 200


class Frozen:
    """Processes this test stopped with SIGSTOP: SIGKILLed at teardown."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)

    def kill(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """At teardown: a frozen process would hold up the supervisor's
        graceful stop for its whole timeout."""
        self.kill()


class Queued:
    """A connection that sent its GET; read back with the others."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        self.sock.setblocking(False)
        self.data = b""
        self.error: str | None = None
        self.ended = 0.0

    @property
    def status(self) -> int | None:
        if not self.data.startswith(b"HTTP/1.1 "):
            return None
        return int(self.data.split(b" ", 2)[1])


def read_all(queued: list[Queued], timeout: float) -> None:
    """Read every connection until it closes, or until ``timeout``."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for one in queued:
            selector.register(one.sock, selectors.EVENT_READ, one)
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(deadline - time.monotonic()):
                one = key.data
                try:
                    chunk = one.sock.recv(65536)
                except OSError as exc:
                    one.error, chunk = type(exc).__name__, b""
                one.data += chunk
                if not chunk:
                    one.ended = time.time()
                    selector.unregister(one.sock)
                    one.sock.close()


def first_ready_after(sup: SupervisorProcess, old: list[int]) -> float:
    """When the first new worker (not a spare) announced it was ready."""
    for match in re.finditer(r"ready: web\[\d+\] pid=(\d+) after [^\n]*", sup.log()):
        if int(match[1]) not in old and "spare" not in match[0]:
            return log_time(sup, match[0])
    raise AssertionError(f"no new worker ready:\n{sup.log()}")


def test_queued_connections_survive_the_workers_death(figures, cleanup):
    sup = start_supervisor(cleanup)
    sup.wait_log("(spare, waiting)")
    # Deaths of processes younger than a second are respawned after a
    # back-off; these workers are to die as healthy ones.
    wait_for(
        lambda: all(p["age"] > 1.0 for p in processes(sup)), message="workers aged"
    )
    # The spare too: with none left to promote, the queue waits for
    # workers booted afresh, the longer way.
    pids = [int(p["pid"]) for p in processes(sup)]
    frozen = Frozen(pids)
    cleanup.append(frozen)
    wait_for(
        lambda: all(
            psutil.Process(pid).status() == psutil.STATUS_STOPPED for pid in pids
        ),
        message="every worker stopped by SIGSTOP",
    )
    queued = [Queued(f"{sup.tmp}/web.sock") for _ in range(QUEUED)]
    killed = time.time()
    frozen.kill()
    read_all(queued, timeout=15)

    resets = [q.error or "closed unanswered" for q in queued if q.status is None]
    figures.exact("0 reset", f"{len(resets)} {sorted(set(resets))}", not resets)
    answered = sum(1 for q in queued if q.status == 200)
    figures.exact(
        "every queued connection answered",
        f"{answered}/{QUEUED}",
        answered == QUEUED,
    )
    respawn = first_ready_after(sup, pids)
    last = max(q.ended for q in queued)
    figures.note("SIGKILL to the first new worker ready", f"{respawn - killed:.3f} s")
    figures.timing(
        "all answered within 3 s of the respawn", (last - respawn) * 1000, 3000
    )


# -- 5. accept spread --------------------------------------------------------------


@pytest.mark.parametrize("route", ["socket", "nginx"])
def test_accept_spread(figures, cleanup, route):
    sup = start_supervisor(cleanup)
    workers = sup.serving("web")
    if route == "nginx":
        nginx = start_nginx(cleanup, sup)
        load: Load = Load(nginx.port, 64, max_seconds=25)
    else:
        # A connection per request: every request is an accept.
        load = UnixLoad(f"{sup.tmp}/web.sock", 64, 25, keepalive=False)
    with load:
        wait_for(lambda: load.result.total >= 5000, message="5000 requests")
    result = load.result

    figures.exact("0 failed requests", failures(result), result.failed == 0)
    fair = result.total / len(workers)
    shares = {pid: result.pids[str(pid)] / fair for pid in workers}
    measured = ", ".join(f"{share:.0%}" for share in sorted(shares.values()))
    assert sum(result.pids.values()) == result.total
    if route == "nginx":
        # Behind nginx the workers see the 32 connections of its upstream
        # pool, each kept by whichever worker accepted it: the spread is
        # that of a few accepts at start, reported here for information.
        figures.note("share of each worker behind nginx's keep-alive pool", measured)
        return
    figures.exact(
        "under 64 connections every worker gets ≥ 50 % of its fair share",
        measured,
        min(shares.values()) >= 0.5,
    )
