"""The uvicorn backend, driven through a real runner on TCP, TCP6 and UNIX.

``AsgiContract`` is what every ASGI backend must do; test_hypercorn.py runs
it again for hypercorn. The uvicorn-only tests follow it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import harness
import pytest

FAMILIES = ("tcp", "tcp6", "unix")
CHUNKS = b"".join(f"chunk {i}\n".encode() for i in range(4))


class Reply:
    """One HTTP response read off a raw connection."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = {k.lower(): v for k, v in response.getheaders()}
        self.body = response.read()
        self.will_close = response.will_close

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(
    conn: socket.socket,
    method: str,
    target: str,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """Send one request on ``conn`` and read its response."""
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    conn.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
    return read_reply(conn, method)


def read_reply(conn: socket.socket, method: str = "GET") -> Reply:
    response = http.client.HTTPResponse(conn, method=method)
    response.begin()
    return Reply(response)


def get(runner: harness.RunnerProcess, target: str, **kwargs: Any) -> Reply:
    """One request on a fresh connection."""
    with runner.connect() as conn:
        return exchange(conn, "GET", target, **kwargs)


def assert_serving(runner: harness.RunnerProcess) -> None:
    """The worker is alive and answers."""
    assert runner.poll() is None, runner.log()
    assert get(runner, "/hello").body == b"Hello, world!"


def start(
    backend: str,
    app: str = "asgi_probe:app",
    *,
    family: str = "tcp",
    markers: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> harness.RunnerProcess:
    env = {"ASGI_PROBE_MARKERS": str(markers)} if markers else {}
    runner = harness.RunnerProcess(
        app, backend=backend, family=family, extra_args=extra_args, env=env
    )
    try:
        runner.start()
    except BaseException:
        runner.stop()
        raise
    return runner


def start_slow_request(runner: harness.RunnerProcess, barrier: Path) -> socket.socket:
    """A /slow request in flight: the app has started it and waits."""
    conn = runner.connect(timeout=harness.DEFAULT_DEADLINE)
    conn.sendall(
        f"GET /slow?barrier={barrier} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    )
    started = Path(f"{barrier}.started")
    harness.wait_for(started.exists, message=f"{started} to exist")
    return conn


class AsgiContract:
    """What an ASGI backend does for the app, whatever the server."""

    backend: ClassVar[str]

    @pytest.fixture(params=FAMILIES)
    def family(self, request: pytest.FixtureRequest) -> str:
        family: str = request.param
        return family

    @pytest.fixture
    def markers(self, tmp_path: Path) -> Path:
        """A directory for the probe's lifespan markers and barrier files."""
        return tmp_path

    @pytest.fixture
    def probe(self, family: str) -> Iterator[harness.RunnerProcess]:
        runner = start(self.backend, family=family)
        yield runner
        runner.stop()

    def test_hello_after_lifespan_startup(self, family: str) -> None:
        with harness.running(
            "hello_asgi:app", backend=self.backend, family=family
        ) as runner:
            reply = get(runner, "/")
        assert reply.status == 200
        assert reply.body == b"Hello, world! (lifespan)"

    def test_keepalive_serves_several_requests_on_one_connection(
        self, probe: harness.RunnerProcess
    ) -> None:
        with probe.connect() as conn:
            replies = [exchange(conn, "GET", "/hello") for _ in range(5)]
        assert [r.status for r in replies] == [200] * 5
        assert not any(r.will_close for r in replies)

    def test_post_body_is_echoed(self, probe: harness.RunnerProcess) -> None:
        body = os.urandom(200_000)
        with probe.connect() as conn:
            reply = exchange(conn, "POST", "/echo", body=body)
        assert reply.status == 200
        assert reply.body == body

    def test_streamed_response_arrives_whole(
        self, probe: harness.RunnerProcess
    ) -> None:
        reply = get(probe, "/stream")
        assert reply.status == 200
        assert reply.headers.get("transfer-encoding") == "chunked"
        assert reply.body == CHUNKS

    def test_scope_fields(self, probe: harness.RunnerProcess, family: str) -> None:
        with probe.connect() as conn:
            local = conn.getsockname()
            reply = exchange(
                conn, "GET", "/scope/a%20b?x=1&y=%2F", headers=(("X-Probe", "yes"),)
            )
        scope = reply.json()
        assert scope["path"] == "/scope/a b"
        assert scope["raw_path"] == "/scope/a%20b"
        assert scope["query_string"] == "x=1&y=%2F"
        assert scope["scheme"] == "http"
        assert scope["http_version"] == "1.1"
        assert scope["method"] == "GET"
        assert ["x-probe", "yes"] in scope["headers"]
        served = probe.sock.getsockname() if probe.sock else None
        if family == "unix":
            assert scope["client"] is None
            assert scope["server"] == [served, None]
        else:
            assert scope["client"] == [local[0], local[1]]
            assert scope["server"] == [served[0], served[1]]

    def test_forwarded_headers_are_not_trusted(self) -> None:
        # With the runner's trust list empty: the backend itself trusts nothing.
        with harness.running(
            "asgi_probe:app",
            backend=self.backend,
            extra_args=["--forwarded-allow-ips", ""],
        ) as runner:
            reply = get(
                runner,
                "/scope",
                headers=(
                    ("X-Forwarded-For", "203.0.113.9"),
                    ("X-Forwarded-Proto", "https"),
                ),
            )
        scope = reply.json()
        assert scope["client"][0] == "127.0.0.1"
        assert scope["scheme"] == "http"

    def test_app_raising_is_a_500_and_the_worker_survives(self) -> None:
        with harness.running("asgi_probe:app", backend=self.backend) as runner:
            assert get(runner, "/raise").status == 500
            assert_serving(runner)
            harness.wait_for(lambda: "raised on purpose" in runner.log())

    @pytest.mark.parametrize(
        "request_bytes",
        [
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
        ],
        ids=["garbage", "bad-length", "oversized-head"],
    )
    def test_malformed_request_is_refused_and_the_worker_survives(
        self, request_bytes: bytes
    ) -> None:
        with harness.running("asgi_probe:app", backend=self.backend) as runner:
            with runner.connect() as conn:
                conn.sendall(request_bytes)
                answer = conn.recv(65536)
            # A 4xx, or the connection closed without an answer.
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
            assert_serving(runner)

    def test_app_without_lifespan_support_is_served(self) -> None:
        with harness.running(
            "asgi_probe:no_lifespan_app", backend=self.backend
        ) as runner:
            assert get(runner, "/").body == b"Hello, world!"

    def test_failed_lifespan_startup_exits_4(self) -> None:
        runner = harness.RunnerProcess(
            "asgi_probe:failing_startup_app", backend=self.backend
        )
        try:
            runner.start(wait_ready=False)
            assert runner.wait() == 4, runner.log()
            assert "error: the app's lifespan" in runner.log()
        finally:
            runner.stop()

    @pytest.mark.parametrize(
        "stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
    )
    def test_stop_drains_the_request_in_flight(
        self, markers: Path, stop_signal: int
    ) -> None:
        runner = start(self.backend, markers=markers)
        try:
            assert (markers / "startup").exists()
            barrier = markers / "barrier"
            with start_slow_request(runner, barrier) as conn:
                runner.signal(stop_signal)
                runner.notify.wait_for("STOPPING=1")
                assert not (markers / "shutdown").exists()
                barrier.touch()
                reply = read_reply(conn)
            assert (reply.status, reply.body) == (200, b"slow done")
            assert runner.wait() == 0, runner.log()
            assert (markers / "shutdown").exists()
        finally:
            runner.stop()

    def test_drain_gives_up_after_the_graceful_timeout(self, markers: Path) -> None:
        runner = start(
            self.backend, markers=markers, extra_args=("--graceful-timeout", "1")
        )
        try:
            # The app would wait GIVE_UP (60 s) for a barrier nobody creates.
            with start_slow_request(runner, markers / "barrier"):
                runner.signal(signal.SIGTERM)
                assert runner.wait() == 0, runner.log()
            assert (markers / "shutdown").exists()
        finally:
            runner.stop()

    def test_second_sigint_exits_at_once(self, markers: Path) -> None:
        runner = start(self.backend, markers=markers)
        try:
            with start_slow_request(runner, markers / "barrier"):
                runner.signal(signal.SIGINT)
                runner.notify.wait_for("STOPPING=1")
                runner.signal(signal.SIGINT)
                assert runner.wait() == 128 + signal.SIGINT
            assert not (markers / "shutdown").exists()
        finally:
            runner.stop()

    def test_sigquit_exits_at_once(self, markers: Path) -> None:
        runner = start(self.backend, markers=markers)
        try:
            with start_slow_request(runner, markers / "barrier"):
                runner.signal(signal.SIGQUIT)
                assert runner.wait() == 128 + signal.SIGQUIT
            assert not (markers / "shutdown").exists()
        finally:
            runner.stop()


class TestUvicorn(AsgiContract):
    backend = "uvicorn"


def test_wsgi_app_is_refused_at_boot_naming_the_backends_that_serve_it(
    tmp_path: Path,
) -> None:
    uds = str(tmp_path / "web.sock")
    result = harness.run_cli(
        ["serve", "--backend", "uvicorn", "--uds", uds, "hello:app"]
    )
    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert "WSGI" in errors[0]
    assert "hypercorn" in errors[0]
    assert "uvicorn or" not in errors[0]


def test_concurrency_limit_answers_503_beyond_it(tmp_path: Path) -> None:
    runner = start("uvicorn", extra_args=("--spawn", "1"))
    try:
        with start_slow_request(runner, tmp_path / "barrier") as conn:
            assert get(runner, "/hello").status == 503
            (tmp_path / "barrier").touch()
            assert read_reply(conn).status == 200
        assert_serving(runner)
    finally:
        runner.stop()


def test_no_access_line_per_request() -> None:
    with harness.running("asgi_probe:app", backend="uvicorn") as runner:
        for _ in range(3):
            get(runner, "/hello")
        # A request's own log lines would be written before its answer.
        assert "GET /hello" not in runner.log()
