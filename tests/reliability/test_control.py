"""The control channel: who may drive juggler, and what hostile input costs.

- By default the control socket is mode 0600 in a 0700 directory and there
  is no TCP listener at all. Another uid is stopped twice: by the directory
  mode, and, when the files are opened to all, by the peer check
  (SO_PEERCRED): of 20 mutating commands it sends, none runs.
- With a TCP endpoint, 20 mutating commands without the right token (none,
  wrong, truncated, extended, of the wrong type) all get an error and none
  runs; a token file that others can read stops juggler at start-up.
- Junk, 1 MiB frames, deep nesting, unknown and dotted command names, sent
  without pause from other processes while 500 idle connections are held
  open: each gets an error or is closed, and ``status`` keeps its p99 under
  100 ms. juggler lifts its soft descriptor limit to allow that many.

(tests/integration/test_control.py checks single exchanges of each kind;
these scenarios count them, under load, with figures.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import secrets
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from control_support import free_port
from harness import TESTS_DIR, SupervisorProcess, wait_for

Started = Callable[..., SupervisorProcess]

SLEEPER = """
[watcher:sl]
cmd = sleep 600
ready = none
"""
NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to be nobody")


def request_line(command: str, **fields: object) -> bytes:
    return json.dumps({"command": command, **fields}).encode() + b"\n"


def exchange(address: str | tuple[str, int], payload: bytes) -> str:
    """Send one frame; "ok", "error: ..." or "closed" (no reply)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(address)
        try:
            client.sendall(payload)
            line = client.makefile("rb").readline()
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
    if not line:
        return "closed"
    reply = json.loads(line)
    return "ok" if reply.get("ok") else f"error: {reply.get('error')}"


def count(outcomes: list[str]) -> str:
    kinds: dict[str, int] = {}
    for outcome in outcomes:
        kind = outcome.split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))


# -- 4. who may connect -------------------------------------------------------


def as_stranger(uid: int, path: str, payloads: list[bytes]) -> list[str]:
    """``exchange`` each payload from a child that has become ``uid``
    (a refused connect reads "refused: ERRNO")."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            outcomes = []
            for payload in payloads:
                try:
                    outcomes.append(exchange(path, payload))
                except OSError as exc:
                    outcomes.append(f"refused: {exc.strerror}")
            os.write(write, json.dumps(outcomes).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data
    outcomes: list[str] = json.loads(data)
    return outcomes


def with_default_endpoint(sup: SupervisorProcess) -> str:
    """Leave ``sup`` to its default endpoint (none in the config, none in
    JUGGLER_ENDPOINT) in a runtime dir of its own; the socket's path.

    The folders above juggler's own are opened to all: only the modes
    juggler chose then stand between a stranger and the socket.
    """
    runtime = os.path.join(sup.tmp, "runtime")
    os.mkdir(runtime)
    for folder in (sup.tmp, runtime):
        os.chmod(folder, 0o755)
    sup.env.update(JUGGLER_ENDPOINT="", XDG_RUNTIME_DIR=runtime)
    path = os.path.join(runtime, "juggler", "juggler.sock")
    sup.endpoint = f"unix://{path}"
    return path


@needs_root
def test_default_endpoint_is_private_and_refuses_other_uids(
    figures, cleanup: list[object]
) -> None:
    sup = SupervisorProcess(SLEEPER)
    cleanup.append(sup)
    path = with_default_endpoint(sup)
    sup.start()
    modes = (
        stat.S_IMODE(os.stat(path).st_mode),
        stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
    )
    figures.exact(
        "default control socket mode, its directory's mode",
        f"{modes[0]:04o}, {modes[1]:04o}",
        modes == (0o600, 0o700),
    )
    listening = [
        c
        for c in psutil.Process(sup.pid).net_connections("inet")
        if c.status == "LISTEN"
    ]
    figures.exact("TCP listeners of juggler by default", len(listening), not listening)

    incr = request_line("incr", args={"name": "sl"})
    walled = as_stranger(NOBODY, path, [incr] * 10)
    # Open the way to the file: only the peer check stands now.
    os.chmod(os.path.dirname(path), 0o755)
    os.chmod(path, 0o666)
    checked = as_stranger(NOBODY, path, [incr] * 10)
    ran = sup.ctl_json("numprocesses", "sl") - 1
    figures.exact(
        "uid 65534, 10 incr through the 0700 directory",
        count(walled),
        all(o == "refused: Permission denied" for o in walled),
    )
    figures.exact(
        "uid 65534, 10 incr with the files opened to all (SO_PEERCRED)",
        count(checked),
        all(o == "closed" for o in checked),
    )
    figures.exact("commands of another uid that ran (of 20)", ran, ran == 0)
    figures.note("refusals logged", str(sup.log().count(f"uid={NOBODY} (not allowed)")))


def token_file(directory: Path, mode: int = 0o600) -> tuple[Path, str]:
    token = secrets.token_urlsafe(24)
    path = directory / "token"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path, token


def test_tcp_commands_without_the_right_token_never_run(
    juggler: Started, figures, tmp_path: Path
) -> None:
    path, token = token_file(tmp_path)
    port = free_port()
    sup = juggler(
        f"[circus]\nendpoint = tcp://127.0.0.1:{port}\ntoken_file = {path}\n" + SLEEPER
    )
    incr = {"command": "incr", "args": {"name": "sl"}}
    wrong = [
        *[{}] * 8,  # no token at all
        *[{"token": secrets.token_urlsafe(24)} for _ in range(5)],
        {"token": token[:-1]},
        {"token": token + "x"},
        {"token": token.upper() if token != token.upper() else token.lower()},
        {"token": None},
        {"token": 0},
        {"token": [token]},
        {"args": {"name": "sl", "token": token}},  # in the wrong place
    ]
    outcomes = [
        exchange(("127.0.0.1", port), json.dumps({**incr, **w}).encode() + b"\n")
        for w in wrong
    ]
    right = json.dumps(
        {"command": "numprocesses", "args": {"name": "sl"}, "token": token}
    )
    reply = json.loads(raw_tcp(port, right.encode() + b"\n"))
    figures.exact(
        f"{len(wrong)} incr without the right token: replies",
        count(outcomes),
        len(wrong) == 20 and all(o.startswith("error: unauthorized") for o in outcomes),
    )
    figures.exact(
        "of them, commands that ran (numprocesses stays 1)",
        reply["result"] - 1,
        reply == {"id": None, "ok": True, "result": 1},
    )
    figures.exact(
        "processes spawned after start-up",
        sup.log().count("spawned:") - 1,
        sup.log().count("spawned:") == 1,
    )


def raw_tcp(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(payload)
        return client.makefile("rb").readline()


def test_a_token_file_others_can_read_stops_the_start(
    figures, cleanup: list[object], tmp_path: Path
) -> None:
    path, _ = token_file(tmp_path, 0o644)
    sup = SupervisorProcess(
        f"[circus]\nendpoint = tcp://127.0.0.1:{free_port()}\ntoken_file = {path}\n"
        + SLEEPER
    )
    cleanup.append(sup)
    started = time.monotonic()
    sup.start(wait=None)
    code = sup.wait(timeout=10)
    elapsed = time.monotonic() - started
    errors = [line for line in sup.log().splitlines() if line.startswith("error:")]
    figures.exact(
        "token file of mode 0644: start-up error in one line",
        f"exit {code}: {' | '.join(errors)}",
        code != 0 and len(errors) == 1 and f"{path} is mode 644" in errors[0],
    )
    figures.exact(
        "processes spawned", sup.log().count("spawned:"), "spawned:" not in sup.log()
    )
    figures.timing("refused within", elapsed * 1000, 1000)


# -- 5. hostile input ---------------------------------------------------------

ABUSE_SECONDS = 8.0
IDLE_CONNECTIONS = 500
STATUS_SAMPLES = 150


def payloads(kind: str) -> list[bytes]:
    """What one kind of abuser sends, one frame per connection."""
    if kind == "junk":
        return [os.urandom(512).replace(b"\n", b"") + b"\n", b"\0" * 64 + b"\n"]
    if kind == "huge":
        frame = b'{"command": "status", "args": {"x": "' + b"a" * (1 << 20) + b'"}}'
        return [frame + b"\n", b"x" * (1 << 20)]  # the second has no end
    if kind == "deep":
        return [
            b"[" * 100_000 + b"]" * 100_000 + b"\n",  # past the frame limit
            b"[" * 30_000 + b"]" * 30_000 + b"\n",  # within it: nests too deep
            b'{"command": "status", "args": '
            + b'{"a": ' * 8_000
            + b"1"
            + b"}" * 8_001
            + b"\n",
        ]
    names = ["__class__", "arbiter.stop", "handle", "table", "_watcher", "quit "]
    names += ["status.__globals__", "Commands.quit", "__init__", "QUIT", ""]
    return [request_line(name) for name in names]


def abuse(path: str, kind: str, seconds: float) -> None:
    """Run in its own process: send ``kind`` frames until ``seconds`` pass,
    print the count of each outcome as JSON."""
    outcomes: dict[str, int] = {}
    frames = payloads(kind)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for frame in frames:
            outcome = exchange(path, frame).split(":")[0]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(json.dumps(outcomes))


KINDS = ("junk", "huge", "deep", "names")


@contextlib.contextmanager
def abusers(path: str) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """One process per kind of abuse (so that they do not share the
    measuring process's interpreter lock)."""
    code = (
        "import sys; from reliability.test_control import abuse; "
        "abuse(sys.argv[1], sys.argv[2], float(sys.argv[3]))"
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    started = {
        kind: subprocess.Popen(
            [sys.executable, "-c", code, path, kind, str(ABUSE_SECONDS)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for kind in KINDS
    }
    try:
        yield started
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@contextlib.contextmanager
def lowered_descriptor_limit(soft: int) -> Iterator[None]:
    """Children started meanwhile inherit a soft RLIMIT_NOFILE of ``soft``."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def open_files_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    return int(line.split()[3])


def timed_status(path: str) -> float:
    started = time.perf_counter()
    assert exchange(path, request_line("status")) == "ok"
    return time.perf_counter() - started


def hold_idle(path: str, n: int) -> list[socket.socket]:
    held = []
    for _ in range(n):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        held.append(client)
    return held


def test_hostile_input_gets_errors_while_status_stays_fast(
    juggler: Started, figures, cleanup: list[object]
) -> None:
    with lowered_descriptor_limit(256):
        sup = juggler(SLEEPER)
    path = sup.endpoint.removeprefix("unix://")
    limit = open_files_limit(sup.pid)
    figures.exact(
        "juggler's soft descriptor limit (started with 256)",
        limit,
        limit >= IDLE_CONNECTIONS + 100,
    )
    idle = hold_idle(path, IDLE_CONNECTIONS)
    cleanup.append(Closer(idle))
    wait_for(lambda: psutil.Process(sup.pid).num_fds() >= IDLE_CONNECTIONS)

    with abusers(path) as running:
        latencies = sorted(timed_status(path) for _ in range(STATUS_SAMPLES))
        during = all(proc.poll() is None for proc in running.values())
        results = {
            kind: json.loads(proc.communicate(timeout=20)[0])
            for kind, proc in running.items()
        }
    for kind, outcomes in results.items():
        figures.exact(
            f"{kind} frames: each got an error or was closed",
            ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())),
            set(outcomes) <= {"error", "closed"} and sum(outcomes.values()) > 0,
        )
    p99 = percentile(latencies, 0.99) * 1000
    figures.exact("abusers still at work at the last status", during, during)
    figures.timing(
        f"status p99 over {STATUS_SAMPLES} round trips, during the abuse "
        f"and {IDLE_CONNECTIONS} idle connections",
        p99,
        100,
    )
    median = percentile(latencies, 0.5) * 1000
    figures.note("status median during the abuse", f"{median:.1f} ms")
    still_open = sum(1 for client in idle if idle_is_open(client))
    figures.exact(
        "idle connections still served by the end",
        still_open,
        still_open == IDLE_CONNECTIONS,
    )
    assert sup.proc is not None and sup.proc.poll() is None


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def idle_is_open(client: socket.socket) -> bool:
    """Whether the server still keeps this connection (a request answers)."""
    client.settimeout(10)
    client.sendall(request_line("numwatchers"))
    return bool(client.recv(4096))


class Closer:
    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets

    def stop(self) -> None:
        for sock in self.sockets:
            sock.close()
