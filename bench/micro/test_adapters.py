"""What the runner adds to each request, in-process, around a trivial app.

The bench's hello app called directly is the baseline; each adapter row is
the same app called through what a backend wraps it in. meinheld's client
object cannot be made outside its C loop, so the fixer gets a stand-in
that has the one method it calls (``get_fd``) and the descriptor of a
real connected socket, prepared once as on a connection's first request:
the rows are then the cost of each later request on a kept-alive
connection, which is what a proxy's pool sends.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.apps import HELLO, wsgi
from juggler.backends.base import ServeOptions
from juggler.backends.head import guard_response
from juggler.backends.meinheld import environ_fixer
from juggler.backends.wsgi11 import WsgiHandler

REQUEST = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"
BASELINE = "test_app_called_directly"


def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
    return None


def environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "app",
        "wsgi.url_scheme": "http",
    }


def drained(body: Iterable[bytes]) -> bytes:
    data = b"".join(body)
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return data


class StandInClient:
    """The part of meinheld's client object the fixer uses."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def get_fd(self) -> int:
        return self._fd


@pytest.fixture
def unix_listener(tmp_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(tmp_path / "web.sock"))
        listener.listen()
        yield listener


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener


def accepted(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(client, server side) of one real connection to ``listener``."""
    client = socket.socket(listener.family, socket.SOCK_STREAM)
    client.connect(listener.getsockname())
    server_side, _ = listener.accept()
    # meinheld accepts non-blocking; the fixer prepares such a connection.
    flags = fcntl.fcntl(server_side.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(server_side.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return client, server_side


@pytest.mark.benchmark(group="adapter")
def test_app_called_directly(benchmark: BenchmarkFixture) -> None:
    benchmark.extra_info["what"] = "the bench's hello app, no adapter (baseline)"
    env = environ()
    assert benchmark(lambda: drained(wsgi(env, start_response))) == HELLO


@pytest.mark.benchmark(group="adapter")
def test_guard_response(benchmark: BenchmarkFixture) -> None:
    benchmark.extra_info.update(
        what="guard_response around it, a GET (waitress, werkzeug, meinheld)",
        baseline=BASELINE,
    )
    app = guard_response(wsgi)
    env = environ()
    assert benchmark(lambda: drained(app(env, start_response))) == HELLO
    env["REQUEST_METHOD"] = "HEAD"
    assert drained(app(env, start_response)) == b""


@pytest.mark.benchmark(group="adapter")
@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_meinheld_environ_fixer(
    benchmark: BenchmarkFixture,
    family: str,
    unix_listener: socket.socket,
    tcp_listener: socket.socket,
) -> None:
    benchmark.extra_info.update(
        what=f"meinheld's environ fixer + guard_response, {family} "
        "socket, a request on a kept-alive connection",
        baseline=BASELINE,
    )
    listener = unix_listener if family == "unix" else tcp_listener
    client, server_side = accepted(listener)
    with client, server_side:
        app = environ_fixer(wsgi, listener)
        env = {**environ(), "meinheld.client": StandInClient(server_side.fileno())}
        assert drained(app(env, start_response)) == HELLO  # the first request
        assert not fcntl.fcntl(server_side.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert benchmark(lambda: drained(app(env, start_response))) == HELLO
        if family == "tcp":
            assert env["REMOTE_PORT"] == str(client.getsockname()[1])
        else:
            assert env["REMOTE_ADDR"] == ""


@pytest.mark.benchmark(group="backend")
def test_wsgiref_request_cycle(
    benchmark: BenchmarkFixture, unix_listener: socket.socket
) -> None:
    benchmark.extra_info["what"] = (
        "the wsgiref backend's whole cycle for one kept-alive GET: read and "
        "parse the head, build the environ, run the app, send the answer "
        "(a socketpair; the client side's send and recv included)"
    )
    handler = WsgiHandler(wsgi, ServeOptions(), unix_listener)
    ours, theirs = socket.socketpair()
    conn = handler.connection(theirs, "")
    assert conn is not None

    def once() -> bytes:
        ours.sendall(REQUEST)
        assert handler.serve(conn)  # the connection stays open, idle
        data = ours.recv(65536)
        while not data.endswith(HELLO):
            data += ours.recv(65536)
        return data

    with ours, theirs:
        answer = benchmark(once)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
