"""The waitress backend, served for real by a runner child on TCP, TCP6, UNIX."""

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

from juggler.backends.base import HeadLimits, ServeOptions
from juggler.backends.waitress import WAITRESS_MAX_HEAD, waitress_settings

pytest.importorskip("waitress")

APP = "waitress_probe:app"
FAMILIES = ["tcp", "tcp6", "unix"]


# -- helpers ------------------------------------------------------------------
@contextlib.contextmanager
def serving(
    family: str, probe_dir: Path, *extra_args: str
) -> Iterator[harness.RunnerProcess]:
    with harness.running(
        APP,
        backend="waitress",
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


def assert_serves_hello(runner: harness.RunnerProcess) -> None:
    with runner.connect() as client:
        status, _, body = exchange(client)
    assert (status, body) == (200, b"Hello, world!")


# -- units --------------------------------------------------------------------
def test_settings_follow_the_serve_options() -> None:
    options = ServeOptions(keepalive_timeout=2.5, concurrency=7)
    with socket.socket() as sock:
        settings = waitress_settings(sock, options)
    assert settings["sockets"] == [sock]
    assert settings["threads"] == 7
    # Whole seconds, never shorter than asked.
    assert settings["channel_timeout"] == 3
    assert settings["max_request_header_size"] == WAITRESS_MAX_HEAD
    assert settings["clear_untrusted_proxy_headers"] is False


def test_small_head_limits_bound_the_whole_head() -> None:
    options = ServeOptions(limits=HeadLimits(100, 10, 200))
    with socket.socket() as sock:
        settings = waitress_settings(sock, options)
    assert settings["max_request_header_size"] == 100 + 10 * 202
    assert "threads" not in settings  # waitress's own default


# -- serving ------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_keepalive_serves_several_requests_on_one_connection(
    family: str, tmp_path: Path
) -> None:
    with serving(family, tmp_path) as runner, runner.connect() as client:
        for _ in range(3):
            status, response, body = exchange(client, "/environ")
            assert status == 200
            assert not response.will_close
            if family != "unix":
                # The peer the app saw is this very client socket.
                port = client.getsockname()[1]
                assert json.loads(body)["REMOTE_PORT"] == str(port)
        status, _, body = exchange(client)
        assert (status, body) == (200, b"Hello, world!")


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
    # The header itself reaches the app untouched, for a proxy-aware app.
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
            client.sendall(b"GET / HTTP/1.1\r\nno colon in this field\r\n\r\n")
            status, _, _ = receive(client)
        assert 400 <= status < 500
        assert_serves_hello(runner)


def test_oversized_head_is_refused(tmp_path: Path) -> None:
    # 300 KiB of fields, each within the per-field limit: past waitress's
    # total bound. The server may reset the connection while we still send.
    fields = {f"X-Filler-{i}": "x" * 4000 for i in range(75)}
    with serving("tcp", tmp_path) as runner:
        with runner.connect() as client:
            try:
                status, _, _ = exchange(client, headers=fields)
            except (ConnectionError, http.client.RemoteDisconnected):
                status = None
        assert status in (431, None)
        assert_serves_hello(runner)


def test_nothing_is_logged_per_request(tmp_path: Path) -> None:
    with serving("tcp", tmp_path) as runner:
        with runner.connect() as client:
            for _ in range(5):
                exchange(client, "/environ")
        runner.signal(signal.SIGTERM)
        assert runner.wait() == 0
        log = runner.log()
    assert "/environ" not in log
    assert "Serving on" not in log


# -- stopping -----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_drain_finishes_the_request_in_flight(family: str, tmp_path: Path) -> None:
    with serving(family, tmp_path, "--graceful-timeout", "30") as runner:
        assert runner.proc is not None and runner.sock is not None
        pid, listening = runner.proc.pid, runner.sock
        with (
            start_blocked_request(runner, tmp_path, "drain") as busy,
            runner.connect() as idle,
        ):
            exchange(idle)

            runner.signal(signal.SIGTERM)
            runner.notify.wait_for("STOPPING=1")
            # This worker stops accepting at once, while the request runs.
            harness.wait_for(
                lambda: not holds_socket(pid, listening),
                message="the runner closed its listening descriptor",
            )
            # An idle keep-alive connection does not hold the drain up.
            assert idle.recv(1) == b""

            (tmp_path / "drain.release").touch()
            status, response, body = receive(busy)
        assert (status, body) == (200, b"released")
        assert response.getheader("Connection") == "close"
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
        # Well inside the 60 s graceful timeout.
        assert runner.wait(timeout=10) == 128 + signal.SIGINT
