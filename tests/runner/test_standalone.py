"""The runner on a socket of its own (--uds, chaussette's --host unix:PATH)
with its --backlog, and options whose effect only a real process shows:
--log-level, --interface auto, SIGQUIT on the thread-based backends."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import harness
import pytest
from harness import http_get, wait_for

from runner.support import APPS, CommandRunner


def own_socket(tmp_path: Path, *args: str, app: str = "hello:app") -> CommandRunner:
    """A runner binding ``tmp_path/own.sock`` itself (``args`` say how)."""
    return CommandRunner(lambda fd: ["serve", *args, "--python-path", APPS, app])


@pytest.mark.parametrize("spelling", ["--uds", "--host unix:"])
def test_serves_a_unix_socket_it_binds_itself(tmp_path: Path, spelling: str):
    path = str(tmp_path / "own.sock")
    args = ["--uds", path] if spelling == "--uds" else ["--host", f"unix:{path}"]
    with own_socket(tmp_path, *args):
        assert http_get(path) == (200, b"Hello, world!")
    # Its own socket file: removed when it stops.
    assert not os.path.exists(path)


def test_backlog_sizes_the_queue_of_a_socket_it_binds(tmp_path: Path):
    path = str(tmp_path / "own.sock")
    runner = own_socket(tmp_path, "--uds", path, "--backlog", "3")
    with runner:
        assert runner.proc is not None
        os.kill(runner.proc.pid, signal.SIGSTOP)  # nothing is accepted now
        clients = []
        try:
            while len(clients) < 64:
                client = socket.socket(socket.AF_UNIX)
                client.setblocking(False)
                try:
                    client.connect(path)
                except BlockingIOError:
                    client.close()
                    break
                clients.append(client)
            # Linux queues backlog + 1 connections on a UNIX listener.
            assert len(clients) == 4
        finally:
            os.kill(runner.proc.pid, signal.SIGCONT)
            for client in clients:
                client.close()
        # Resumed, it accepts what queued (and the clients gone meanwhile).
        wait_for(lambda: _answers(path), message="serving again")


def _answers(path: str) -> bool:
    try:
        return http_get(path)[0] == 200
    except OSError:  # the queue is still full
        return False


def test_log_level_warning_leaves_out_the_info_lines(tmp_path: Path):
    with harness.running("hello:app", extra_args=["--log-level", "warning"]) as r:
        assert http_get(r.address)[0] == 200
        assert "serving:" not in r.log()
    with harness.running("hello:app", extra_args=["--log-level", "debug"]) as r:
        assert "serving:" in r.log() and "DEBUG" in r.log()


ASGI_CLASS_APP = '''
class App:
    """An ASGI app written as a class: an instance with async __call__."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"class"})


app = App()
'''


def test_interface_auto_serves_an_asgi_class_with_uvicorn(tmp_path: Path):
    (tmp_path / "classy.py").write_text(ASGI_CLASS_APP)
    extra = ["--python-path", str(tmp_path)]
    with harness.running("classy:app", extra_args=extra) as runner:
        assert http_get(runner.address) == (200, b"class")
        assert "backend=uvicorn" in runner.log()


@pytest.mark.parametrize("backend", ["wsgiref", "gevent", "waitress", "werkzeug"])
def test_sigquit_exits_at_once_with_a_request_in_flight(backend: str):
    extra = ["--graceful-timeout", "60"]
    with harness.running("reliability_app:app", backend=backend, extra_args=extra) as r:
        client = r.connect()
        client.sendall(b"GET /sleep?s=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: _has_connection(r), message="the request reached it")
        r.signal(signal.SIGQUIT)
        assert r.wait(timeout=10) == 128 + signal.SIGQUIT
        client.close()


def _has_connection(runner: harness.RunnerProcess) -> bool:
    import psutil

    assert runner.proc is not None
    try:
        return any(
            c.status == "ESTABLISHED"
            for c in psutil.Process(runner.proc.pid).net_connections()
        )
    except psutil.NoSuchProcess:
        return False
