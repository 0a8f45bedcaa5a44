"""``juggler top`` under a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
from collections.abc import Iterator

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


class Top:
    """``juggler top`` on a pty; ``screen`` is every byte it has drawn."""

    def __init__(self, endpoint: str, rows: int = 30, cols: int = 100) -> None:
        self.leader, follower = pty.openpty()
        self._follower = follower
        self.resize(rows, cols, notify=False)
        env = {**os.environ, "TERM": "xterm"}
        env.pop("LINES", None)  # curses reads the pty's size, as on a terminal
        env.pop("COLUMNS", None)
        self.proc = subprocess.Popen(
            [*juggler_command(), "--endpoint", endpoint, "top"],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env=env,
            start_new_session=True,
        )
        self.screen = b""

    def read(self) -> bytes:
        """Collect what is there to read now; return the whole screen."""
        while select.select([self.leader], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.leader, 65536)
            except OSError:  # the child closed the pty
                break
            if not chunk:
                break
            self.screen += chunk
        return self.screen

    def wait_for(self, text: bytes, timeout: float = 15) -> None:
        start = len(self.screen)
        wait_for(
            lambda: text in self.read()[start:],
            timeout=timeout,
            message=f"top drew {text!r}",
        )

    def resize(self, rows: int, cols: int, *, notify: bool = True) -> None:
        size = struct.pack("HHHH", rows, cols, 0, 0)
        fcntl.ioctl(self._follower, termios.TIOCSWINSZ, size)
        if notify:
            # The kernel signals the pty's foreground group; top runs in
            # its own session, so tell it as a terminal emulator would.
            os.kill(self.proc.pid, signal.SIGWINCH)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self._follower)
        os.close(self.leader)


@pytest.fixture
def sup() -> Iterator[SupervisorProcess]:
    supervisor = SupervisorProcess(CONFIG)
    supervisor.start()
    supervisor.wait_log("ready: web[", count=2)
    yield supervisor
    supervisor.stop()


@pytest.fixture
def top(sup: SupervisorProcess) -> Iterator[Top]:
    view = Top(sup.endpoint)
    yield view
    view.close()


def test_top_shows_watchers_and_quits_on_q(sup, top):
    wait_for(
        lambda: b"SOCKETS" in top.read() and top.screen.count(b"web") >= 3,
        timeout=15,
        message="top drew the watchers",
    )
    assert b"juggler top" in top.screen and b"2/2 processes" in top.screen
    for pid in sup.serving():
        assert str(pid).encode() in top.screen
    os.write(top.leader, b"q")
    assert top.proc.wait(timeout=10) == 0


def test_top_exits_with_one_line_when_juggler_goes_away(sup, top):
    top.wait_for(b"SOCKETS")
    sup.signal(signal.SIGTERM)
    assert sup.wait(timeout=30) == 0
    assert top.proc.wait(timeout=15) == 1
    top.read()
    tail = top.screen.rsplit(b"error: ", 1)
    assert len(tail) == 2, top.screen[-400:]
    message = tail[1].decode(errors="replace").strip()
    assert "closed the connection" in message and "\n" not in message
    assert b"Traceback" not in top.screen


def test_top_redraws_to_the_new_size_of_its_terminal(sup, top):
    top.wait_for(b"SOCKETS")
    # 8 rows hold the title, the header and the first few processes: the
    # socket section, further down, is no longer drawn.
    mark = len(top.read())
    top.resize(8, 40)
    # A resize clears the screen and draws it all again, cut to 40 columns.
    wait_for(lambda: b"\x1b[2J" in top.read()[mark:], message="a cleared screen")
    redrawn = top.screen[mark:].rsplit(b"\x1b[2J", 1)[1]
    assert (
        b"juggler top" in redrawn
        and b"WATCHER        WID     PID   CPU%  RSS " in redrawn
    )
    assert b"RSS MiB" not in redrawn
    for _ in range(2):  # two more frames (each changes at least the clock)
        drawn = len(top.read())
        wait_for(lambda n=drawn: len(top.read()) > n, message="another frame")
    assert b"SOCKETS" not in top.screen[mark:]
    top.resize(30, 100)
    top.wait_for(b"SOCKETS")
    os.write(top.leader, b"q")
    assert top.proc.wait(timeout=10) == 0
