"""Operator commands end to end that the other files leave out: options
after the command, start, restart --all-at-once, signal to every process
and to process groups, and clients that misbehave on the control socket."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterable
from pathlib import Path

from control_support import ask, control_path
from harness import wait_for

WEB = """
[socket:web]
path = {tmp}/web.sock

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {apps} hello:app
numprocesses = 2
copy_env = true
"""

PROBE = """
[watcher:probe]
cmd = {python} {apps}/signal_probe.py {tmp}
numprocesses = 2
ready = none
"""

IDLE = """
[watcher:idle]
cmd = sleep 60
autostart = false
ready = none
"""


def test_client_options_work_before_and_after_the_command(juggler):
    sup = juggler(WEB)
    sup.wait_log("ready: web[", count=2)
    before = sup.ctl("--json", "status", "web")
    after = sup.ctl("status", "web", "--json")
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout)["name"] == json.loads(after.stdout)["name"]
    # Not given after the command, an option keeps its value from before.
    assert sup.ctl("--json", "numprocesses", "web").stdout.strip() == "2"


def test_usage_mistakes_are_one_line_and_exit_2(juggler):
    sup = juggler(WEB)
    done = sup.ctl("incr")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: the following arguments are required: name (see juggler incr --help)"
    ]


def test_start_brings_up_a_watcher_that_did_not_autostart(juggler):
    sup = juggler(IDLE)
    assert sup.status()["idle"]["state"] == "stopped"
    done = sup.ctl("start", "idle")
    assert done.returncode == 0, done.stderr
    assert sup.status()["idle"]["state"] == "running"
    assert len(sup.serving("idle")) == 1


def test_restart_all_at_once_stops_every_process_before_starting_new_ones(
    juggler,
):
    sup = juggler(WEB)
    sup.wait_log("ready: web[", count=2)
    old = set(sup.serving("web"))
    events = EventLog(control_path(sup))
    done = sup.ctl("restart", "web", "--all-at-once")
    assert done.returncode == 0, done.stderr
    new = set(sup.serving("web"))
    assert len(new) == 2 and not old & new
    wait_for(lambda: events.has(("exit", pid) for pid in old))
    wait_for(lambda: events.has(("ready", pid) for pid in new))
    last_old_exit = max(events.index("exit", pid) for pid in old)
    first_new_spawn = min(events.index("spawn", pid) for pid in new)
    assert last_old_exit < first_new_spawn, events.seen
    events.close()


def test_signal_reaches_every_process_and_with_children_their_groups(
    juggler,
):
    sup = juggler(PROBE)
    tmp = Path(sup.tmp)
    wait_for(lambda: len(list(tmp.glob("*.child"))) == 2, message="probes forked")
    parents = sup.serving("probe")
    children = [int((tmp / f"{pid}.child").read_text()) for pid in parents]

    done = sup.ctl("signal", "probe", "USR1")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: all((tmp / f"{pid}.usr1").exists() for pid in parents))
    assert not any((tmp / f"{pid}.usr1").exists() for pid in children)

    done = sup.ctl("signal", "probe", str(parents[0]), "USR1", "--children")
    assert done.returncode == 0, done.stderr
    wait_for((tmp / f"{children[0]}.usr1").exists)
    assert not (tmp / f"{children[1]}.usr1").exists()


def test_clients_that_never_read_or_never_finish_hold_up_no_one(juggler):
    sup = juggler(WEB)
    sup.wait_log("ready: web[", count=2)
    path = control_path(sup)
    # One client sends half a request and waits; another floods requests
    # and never reads a reply; a third subscribes to events, never reading.
    half = socket.socket(socket.AF_UNIX)
    half.connect(path)
    half.sendall(b'{"command": "sta')
    flood = socket.socket(socket.AF_UNIX)
    flood.connect(path)
    flood.setblocking(False)
    request = b'{"command": "status"}\n' * 1000
    sent = 0
    try:
        while sent < 4 * 2**20:
            sent += flood.send(request)
    except BlockingIOError:
        pass  # its replies fill the socket: juggler must not wait on it
    deaf = socket.socket(socket.AF_UNIX)
    deaf.connect(path)
    deaf.sendall(b'{"command": "events"}\n')
    try:
        for _ in range(5):  # events pile up for the deaf subscriber
            assert sup.ctl("incr", "web", "2").returncode == 0
            assert sup.ctl("decr", "web", "2").returncode == 0
        assert ask(path, "numprocesses", name="web")["result"] == 2
        victim = sup.serving("web")[0]
        os.kill(victim, 9)
        wait_for(lambda: victim not in sup.serving("web"))
        wait_for(lambda: len(sup.serving("web")) == 2, message="respawned")
    finally:
        for client in (half, flood, deaf):
            client.close()


class EventLog:
    """The event stream of a juggler, read in a thread into ``seen``."""

    def __init__(self, path: str) -> None:
        self.seen: list[tuple[str, int | None]] = []
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.connect(path)
        self._sock.sendall(b'{"command": "events"}\n')
        self._reader = self._sock.makefile("rb")
        assert json.loads(self._reader.readline())["ok"]
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._reader:
            event = json.loads(line).get("event")
            if event is not None:
                self.seen.append((event["topic"], event.get("pid")))

    def has(self, wanted: Iterable[tuple[str, int]]) -> bool:
        return all(item in self.seen for item in wanted)

    def index(self, topic: str, pid: int) -> int:
        return self.seen.index((topic, pid))

    def close(self) -> None:
        self._sock.close()


def test_incr_past_the_ceiling_is_refused_and_spawns_nothing(juggler):
    sup = juggler(IDLE.replace("autostart = false", "autostart = true"))
    done = sup.ctl("incr", "idle", "100000")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line == (
        "error: idle: 100001 processes is more than one watcher may have (10000)"
    )
    assert len(sup.serving("idle")) == 1


def test_tables_for_people_hold_what_the_json_holds(juggler):
    sup = juggler(WEB)
    sup.wait_log("ready: web[", count=2)
    pids = sup.serving("web")

    stats = sup.ctl("stats", "web")
    assert stats.returncode == 0, stats.stderr
    header, *rows = stats.stdout.splitlines()
    assert header.split() == [
        "watcher", "wid", "pid", "cpu%", "rss", "MiB", "fds", "threads", "conns", "age",
    ]  # fmt: skip
    by_pid = {int(row.split()[2]): row.split() for row in rows}
    assert set(pids) <= set(by_pid)
    for pid in pids:
        assert by_pid[pid][0] == "web" and float(by_pid[pid][4]) > 1  # RSS MiB

    sockets = sup.ctl("listsockets")
    listed = sup.ctl_json("listsockets")
    assert sockets.stdout.split() == [
        listed[0]["name"], f"fd={listed[0]['fd']}", listed[0]["location"],
    ]  # fmt: skip

    status = sup.ctl("status", "web").stdout.splitlines()
    assert status[0] == "web: running (2/2 processes, 0 restarts)"
    for pid in pids:
        assert any(f"pid={pid} " in line and "ready" in line for line in status[1:])
    assert sup.ctl("numprocesses", "web").stdout == "2\n"
    assert sup.ctl("list").stdout == "web\n"
