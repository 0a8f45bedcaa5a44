"""The werkzeug backend, served for real by a runner child on TCP, TCP6, UNIX.

werkzeug's development server closes every connection after its response
(see backends/werkzeug.py), so where the waitress tests check keep-alive
these check that each connection ends cleanly.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest

from juggler.backends.werkzeug import werkzeug_address

pytest.importorskip("werkzeug")

APP = "werkzeug_probe:app"
FAMILIES = ["tcp", "tcp6", "unix"]


# -- helpers ------------------------------------------------------------------
@contextlib.contextmanager
def serving(
    family: str, probe_dir: Path, *extra_args: str
) -> Iterator[harness.RunnerProcess]:
    with harness.running(
        APP,
        backend="werkzeug",
        family=family,
        env={"PROBE_DIR": str(probe_dir)},
        extra_args=list(extra_args),
    ) as runner:
        yield runner


def send(
    client: socket.socket,
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> None:
    lines = [f"{method} {path} HTTP/1.1", "Host: probe"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def receive(client: socket.socket) -> tuple[int, http.client.HTTPResponse, bytes]:
    response = http.client.HTTPResponse(client)
    try:
        response.begin()
        return response.status, response, response.read()
    finally:
        # It holds a file on the socket, which would keep it open.
        response.close()


def exchange(
    client: socket.socket, path: str = "/", **kwargs: object
) -> tuple[int, http.client.HTTPResponse, bytes]:
    send(client, path, **kwargs)  # type: ignore[arg-type]
    return receive(client)


def environ_seen(runner: harness.RunnerProcess, **kwargs: object) -> dict[str, str]:
    with runner.connect() as client:
        status, _, body = exchange(client, "/environ", **kwargs)
    assert status == 200
    seen: dict[str, str] = json.loads(body)
    return seen


def holds_socket(pid: int, sock: socket.socket) -> bool:
    """Whether process ``pid`` still has a descriptor on ``sock``."""
    target = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            if os.readlink(os.path.join(fd_dir, name)) == target:
                return True
    return False


def socket_count(pid: int) -> int:
    """How many socket descriptors process ``pid`` holds."""
    fd_dir = f"/proc/{pid}/fd"
    count = 0
    for name in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            count += os.readlink(os.path.join(fd_dir, name)).startswith("socket:")
    return count


def start_blocked_request(
    runner: harness.RunnerProcess, probe_dir: Path, name: str
) -> socket.socket:
    client = runner.connect()
    try:
        send(client, f"/block?{name}")
        harness.wait_for(
            (probe_dir / f"{name}.started").exists, message="the app got the request"
        )
    except BaseException:
        client.close()
        raise
    return client


def read_to_end(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def assert_serves_hello(runner: harness.RunnerProcess) -> None:
    with runner.connect() as client:
        status, _, body = exchange(client)
    assert (status, body) == (200, b"Hello, world!")


# -- units --------------------------------------------------------------------
def test_werkzeug_is_given_a_host_of_the_socket_family(tmp_path: Path) -> None:
    with harness.bind_tcp("::1") as tcp6:
        assert werkzeug_address(tcp6) == ("::1", tcp6.getsockname()[1])
    with harness.bind_tcp() as tcp4:
        assert werkzeug_address(tcp4) == ("127.0.0.1", tcp4.getsockname()[1])
    path = str(tmp_path / "w.sock")
    with harness.bind_unix(path) as unix:
        assert werkzeug_address(unix) == (f"unix://{path}", 0)


# -- serving ------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_each_response_closes_its_connection(family: str, tmp_path: Path) -> None:
    with serving(family, tmp_path) as runner:
        for _ in range(3):
            with runner.connect() as client:
                status, response, body = exchange(client)
                assert (status, body) == (200, b"Hello, world!")
                assert response.getheader("Connection") == "close"
                # The server ends the connection: a client never waits on it.
                assert client.recv(1) == b""


@pytest.mark.parametrize("family", FAMILIES)
def test_post_body_is_echoed(family: str, tmp_path: Path) -> None:
    payload = os.urandom(256 * 1024)
    with serving(family, tmp_path) as runner, runner.connect() as client:
        status, _, body = exchange(client, "/echo", method="POST", body=payload)
        assert status == 200
        assert body == payload


@pytest.mark.parametrize("family", ["tcp", "tcp6"])
def test_tcp_environ_names_peer_and_listening_address(
    family: str, tmp_path: Path
) -> None:
    with serving(family, tmp_path) as runner, runner.connect() as client:
        _, _, body = exchange(client, "/environ")
        seen = json.loads(body)
        host, port = client.getsockname()[:2]
        assert seen["REMOTE_ADDR"] == host
        assert seen["REMOTE_PORT"] == str(port)
        assert seen["SERVER_NAME"] == runner.address[0]
        assert seen["SERVER_PORT"] == str(runner.address[1])


def test_unix_environ_follows_the_contract(tmp_path: Path) -> None:
    with serving("unix", tmp_path) as runner:
        seen = environ_seen(runner)
    assert seen["REMOTE_ADDR"] == ""
    assert seen["REMOTE_PORT"] is None
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("localhost", "80")


@pytest.mark.parametrize("family", FAMILIES)
def test_x_forwarded_for_does_not_change_remote_addr(
    family: str, tmp_path: Path
) -> None:
    # With the runner's trust list empty: the backend itself trusts nothing.
    with serving(family, tmp_path, "--forwarded-allow-ips", "") as runner:
        plain = environ_seen(runner)
        spoofed = environ_seen(runner, headers={"X-Forwarded-For": "203.0.113.9"})
    assert spoofed["REMOTE_ADDR"] == plain["REMOTE_ADDR"]
    assert spoofed["HTTP_X_FORWARDED_FOR"] == "203.0.113.9"


@pytest.mark.parametrize("family", FAMILIES)
def test_app_error_is_500_and_the_worker_keeps_serving(
    family: str, tmp_path: Path
) -> None:
    with serving(family, tmp_path) as runner:
        with runner.connect() as client:
            status, _, _ = exchange(client, "/raise")
        assert status == 500
        assert_serves_hello(runner)
        harness.wait_for(
            lambda: "probe app raised on purpose" in runner.log(),
            message="the traceback is logged",
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_malformed_request_is_refused_and_the_worker_keeps_serving(
    family: str, tmp_path: Path
) -> None:
    with serving(family, tmp_path) as runner:
        with runner.connect() as client:
            client.sendall(b"GARBAGE REQUEST\r\n\r\n")
            answer = read_to_end(client)
        # http.server answers an unparsable request line the HTTP/0.9 way:
        # an error page without a status line, then it closes.
        assert b"Error code: 400" in answer
        assert not answer.startswith(b"HTTP/1.1 2")
        assert_serves_hello(runner)


@pytest.mark.parametrize(
    ("path", "fields", "expected"),
    [
        ("/" + "a" * 4100, {}, 414),
        ("/", {"X-Long": "v" * 8200}, 431),
        ("/", {f"X-Field-{i}": "v" for i in range(101)}, 431),
    ],
    ids=["request-line", "field-size", "field-count"],
)
def test_head_limits_are_enforced(
    path: str, fields: dict[str, str], expected: int, tmp_path: Path
) -> None:
    with serving("tcp", tmp_path) as runner:
        with runner.connect() as client:
            status, _, _ = exchange(client, path, headers=fields)
        assert status == expected
        assert_serves_hello(runner)


def test_head_within_limits_is_served(tmp_path: Path) -> None:
    fields = {f"X-Field-{i}": "v" * 100 for i in range(90)}
    with serving("tcp", tmp_path) as runner, runner.connect() as client:
        status, _, body = exchange(client, "/" + "a" * 4000, headers=fields)
        assert (status, body) == (200, b"Hello, world!")


def test_one_development_warning_and_nothing_per_request(tmp_path: Path) -> None:
    with serving("tcp", tmp_path) as runner:
        for _ in range(5):
            with runner.connect() as client:
                exchange(client, "/environ")
        runner.signal(signal.SIGTERM)
        assert runner.wait() == 0
        log = runner.log()
    assert log.count("werkzeug is a development server") == 1
    assert "/environ" not in log
    assert "Running on" not in log


# -- stopping -----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_drain_finishes_the_request_in_flight(family: str, tmp_path: Path) -> None:
    with serving(family, tmp_path, "--graceful-timeout", "30") as runner:
        assert runner.proc is not None and runner.sock is not None
        pid, listening = runner.proc.pid, runner.sock
        with start_blocked_request(runner, tmp_path, "drain") as busy:
            # Connected, no request sent yet: must not hold the drain up.
            # Once the worker has accepted it, that is; before, it would
            # wait in the shared backlog for a sibling worker.
            before = socket_count(pid)
            with runner.connect() as waiting:
                harness.wait_for(
                    lambda: socket_count(pid) > before,
                    message="the worker accepted the waiting connection",
                )
                runner.signal(signal.SIGTERM)
                runner.notify.wait_for("STOPPING=1")
                harness.wait_for(
                    lambda: not holds_socket(pid, listening),
                    message="the runner closed its listening descriptors",
                )
                assert waiting.recv(1) == b""

            (tmp_path / "drain.release").touch()
            status, _, body = receive(busy)
        assert (status, body) == (200, b"released")
        assert runner.wait(timeout=10) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_request_past_the_graceful_timeout_is_cut(family: str, tmp_path: Path) -> None:
    with serving(family, tmp_path, "--graceful-timeout", "1") as runner:
        with start_blocked_request(runner, tmp_path, "cut") as busy:
            runner.signal(signal.SIGTERM)
            # Bounded: the graceful timeout plus a margin for a loaded machine.
            assert runner.wait(timeout=1 + 10) == 0
            with contextlib.suppress(ConnectionResetError):
                assert busy.recv(1) == b""
        assert "cut: 1 connection(s) still busy" in runner.log()


def test_second_sigint_exits_at_once(tmp_path: Path) -> None:
    with (
        serving("tcp", tmp_path, "--graceful-timeout", "60") as runner,
        start_blocked_request(runner, tmp_path, "twice"),
    ):
        runner.signal(signal.SIGINT)
        runner.notify.wait_for("STOPPING=1")
        runner.signal(signal.SIGINT)
        assert runner.wait(timeout=10) == 128 + signal.SIGINT
