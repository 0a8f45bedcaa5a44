"""Helpers shared by the runner's process tests."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

import harness

APPS = str(harness.APPS_DIR)
# Where a test needs the runner to bind (or fail before binding) and does
# not care where: port 0 lets the kernel pick a free port.
ANY_PORT = ("--host", "127.0.0.1", "--port", "0")


def error_line(stderr: str) -> str:
    """The one ``error: ...`` line of a failed run (argparse's included)."""
    lines = [line for line in stderr.splitlines() if "error: " in line]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    return lines[0]


def assert_fails(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> str:
    """Check the exit code and that the error line holds every fragment."""
    assert result.returncode == code, (
        f"exit {result.returncode}, expected {code}; stderr:\n{result.stderr}"
    )
    line = error_line(result.stderr)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def get(runner: harness.RunnerProcess, path: str) -> tuple[int, bytes]:
    """GET ``path`` from a TCP runner; return the status and body."""
    address = runner.address
    assert isinstance(address, tuple), "get() needs a TCP runner"
    host, port = address
    conn = http.client.HTTPConnection(host, port, timeout=20)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def getenv(runner: harness.RunnerProcess, name: str) -> Any:
    """What ``os.environ.get(name)`` is inside the served conformance app."""
    status, body = get(runner, f"/getenv?name={name}")
    assert status == 200, body
    return json.loads(body)["value"]


def stop_and_wait(runner: harness.RunnerProcess, timeout: float = 20.0) -> int:
    """SIGTERM the runner alone and wait for its exit code (logs flushed)."""
    runner.signal(signal.SIGTERM)
    return runner.wait(timeout)


class CommandRunner(harness.RunnerProcess):
    """A RunnerProcess whose command line the test writes itself."""

    def __init__(self, build: Callable[[int], Sequence[str]], **kwargs: Any) -> None:
        super().__init__("unused:app", **kwargs)
        self._build = build

    def command(self, fd: int) -> list[str]:
        return [*harness.runner_command(), *self._build(fd)]


class StandaloneRunner(harness.RunnerProcess):
    """A runner that binds its own socket (--host/--port or --uds).

    No socket is passed: ``address`` is read from the runner's own
    ``serving: ... on tcp HOST:PORT`` line, so ``--port 0`` works.
    """

    def __init__(self, args: Sequence[str], **kwargs: Any) -> None:
        super().__init__("unused:app", **kwargs)
        self.args = list(args)

    def start(
        self, wait_ready: bool = True, timeout: float = harness.DEFAULT_DEADLINE
    ) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.path, **self.env}
        command = [*harness.runner_command(), *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=APPS,
                start_new_session=True,
            )
        if wait_ready:
            self.wait_ready(timeout)

    @property
    def address(self) -> tuple[str, int] | str:
        found = re.search(r"serving: .* on (tcp|unix) (\S+) pid=", self.log())
        assert found, f"no serving line in:\n{self.log()}"
        kind, where = found.groups()
        if kind == "unix":
            return where
        host, _, port = where.rpartition(":")
        return host.strip("[]"), int(port)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        address = self.address
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        if isinstance(address, tuple) and ":" in address[0]:
            family = socket.AF_INET6
        client = socket.socket(family, socket.SOCK_STREAM)
        client.settimeout(timeout)
        client.connect(address)
        return client
