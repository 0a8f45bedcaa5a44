"""``juggler stats``: psutil's figures per process, right from the first call."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil
from harness import http_get

from juggler.supervisor.stats import StatsSampler

BUSY = 'python -c "while True: pass"'

CONFIG = """
[socket:web]
host = 127.0.0.1
port = 0

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {apps} hello:app
copy_env = true
spare_processes = 0

[watcher:busy]
cmd = {python} -c "while True: pass"
ready = none
"""

FIELDS = {"watcher", "wid", "pid", "age", "cpu", "rss", "threads"}
FIELDS |= {"open_files", "connections"}


def test_first_stats_shows_a_busy_process_busy(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[1]")
    sup.wait_log("spawned: busy[1]")
    [row] = sup.ctl_json("stats", "busy")
    assert set(row) == FIELDS
    assert row["watcher"] == "busy" and row["wid"] == 1
    assert row["pid"] == sup.serving("busy")[0]
    assert row["cpu"] > 30, row  # lenient: the machine is shared
    assert 0 < row["age"] < 120
    assert row["rss"] > 1 << 20  # a Python interpreter: more than 1 MiB
    assert row["threads"] >= 1 and row["open_files"] >= 3  # 0, 1, 2 at least
    assert row["connections"] == 0  # it holds no socket
    # A later call measures since the first one: still busy.
    [again] = sup.ctl_json("stats", "busy")
    assert again["cpu"] > 30 and again["age"] > row["age"]


def test_stats_of_a_server_counts_its_sockets(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[1]")
    [listening] = sup.ctl_json("listsockets")
    host, port = listening["location"].rsplit(":", 1)
    # A client holding a connection open: the runner has accepted it.
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.1 200")
        [row] = sup.ctl_json("stats", "web")
        expected = len(psutil.Process(row["pid"]).net_connections(kind="all"))
    assert row["pid"] == sup.serving("web")[0]
    # The listening socket and the accepted connection, at least.
    assert row["connections"] >= 2 and abs(row["connections"] - expected) <= 1
    assert row["cpu"] >= 0 and row["rss"] > 1 << 20 and row["threads"] >= 1
    assert http_get((host, int(port)))[0] == 200


@dataclass
class Child:
    """A real child process, with what the sampler reads of one."""

    popen: subprocess.Popen[bytes]
    wid: int
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def age(self) -> float:
        return time.monotonic() - self.started_at


def test_sampling_one_watcher_keeps_the_others_handles():
    busy = Child(subprocess.Popen([sys.executable, "-c", "while True: pass"]), 1)
    idle = Child(
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]), 1
    )
    try:
        sampler = StatsSampler()
        everyone = [busy, idle]
        [first] = sampler.sample([("busy", busy)], everyone)
        assert first["cpu"] > 30
        kept = sampler._handles[busy.pid]
        [quiet] = sampler.sample([("idle", idle)], everyone)
        assert quiet["cpu"] < 30
        assert sampler._handles[busy.pid] is kept  # not evicted
        # A process that is gone from every watcher is forgotten.
        sampler.sample([("idle", idle)], [idle])
        assert busy.pid not in sampler._handles
    finally:
        for child in (busy, idle):
            child.popen.kill()
            child.popen.wait()
