"""``juggler top`` under a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess

import pytest
from harness import SupervisorProcess, juggler_command, wait_for

CONFIG = """
[socket:web]
path = {tmp}/web.sock

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {apps} hello:app
numprocesses = 2
copy_env = true
"""


@pytest.fixture
def sup():
    supervisor = SupervisorProcess(CONFIG)
    supervisor.start()
    supervisor.wait_log("ready: web[", count=2)
    yield supervisor
    supervisor.stop()


def test_top_shows_watchers_and_quits_on_q(sup):
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "LINES": "30", "COLUMNS": "100"}
    proc = subprocess.Popen(
        [*juggler_command(), "--endpoint", sup.endpoint, "top"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        start_new_session=True,
    )
    os.close(follower)
    screen = b""

    def read_screen() -> bool:
        nonlocal screen
        while select.select([leader], [], [], 0.05)[0]:
            try:
                screen += os.read(leader, 65536)
            except OSError:
                break
        return b"SOCKETS" in screen and screen.count(b"web") >= 3

    try:
        wait_for(read_screen, timeout=15, message="top drew the watchers")
        assert b"juggler top" in screen and b"2/2 processes" in screen
        for pid in sup.serving():
            assert str(pid).encode() in screen
        os.write(leader, b"q")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
