"""The hypercorn backend: the ASGI contract, and WSGI apps served natively."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest

from backends.test_uvicorn import (
    CHUNKS,
    FAMILIES,
    AsgiContract,
    assert_serving,
    exchange,
    get,
    read_reply,
    start,
    start_slow_request,
)

WSGI_APP = "asgi_probe:wsgi_app"


class TestHypercorn(AsgiContract):
    backend = "hypercorn"


@pytest.fixture(params=FAMILIES)
def wsgi_runner(request: pytest.FixtureRequest) -> Iterator[harness.RunnerProcess]:
    runner = start("hypercorn", WSGI_APP, family=request.param)
    yield runner
    runner.stop()


def test_wsgi_hello_with_keepalive(wsgi_runner: harness.RunnerProcess) -> None:
    with wsgi_runner.connect() as conn:
        replies = [exchange(conn, "GET", "/hello") for _ in range(3)]
    assert [(r.status, r.body) for r in replies] == [(200, b"Hello, world!")] * 3
    assert not any(r.will_close for r in replies)


def test_wsgi_environ_keeps_the_contract(wsgi_runner: harness.RunnerProcess) -> None:
    with wsgi_runner.connect() as conn:
        local = conn.getsockname()
        reply = exchange(
            conn,
            "GET",
            "/environ/a%20b%2Fc?x=1",
            headers=(
                ("X-Probe", "one"),
                ("X-Probe", "two"),
                ("X_Forwarded_For", "203.0.113.9"),
                ("Cookie", "a=1"),
                ("Cookie", "b=2"),
            ),
        )
    environ = reply.json()
    assert environ["types"] == ["str"]  # every CGI-style value is a str
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/environ/a b/c"
    assert environ["QUERY_STRING"] == "x=1"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_X_PROBE"] == "one,two"
    assert environ["HTTP_X_FORWARDED_FOR"] is None
    assert environ["HTTP_COOKIE"] == "a=1; b=2"

    assert wsgi_runner.sock is not None
    served = wsgi_runner.sock.getsockname()
    if wsgi_runner.family == "unix":
        expected = ("localhost", "80", "", None)
    else:
        expected = (served[0], str(served[1]), local[0], str(local[1]))
    actual = tuple(
        environ[key]
        for key in ("SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR", "REMOTE_PORT")
    )
    assert actual == expected


def test_wsgi_post_body_is_read() -> None:
    body = os.urandom(300_000)
    with (
        harness.running(WSGI_APP, backend="hypercorn") as runner,
        runner.connect() as conn,
    ):
        reply = exchange(conn, "POST", "/echo", body=body)
    assert (reply.status, reply.body) == (200, body)


def test_wsgi_streamed_and_empty_responses() -> None:
    with (
        harness.running(WSGI_APP, backend="hypercorn") as runner,
        runner.connect() as conn,
    ):
        stream = exchange(conn, "GET", "/stream")
        empty = exchange(conn, "GET", "/empty")
    assert (stream.status, stream.body) == (200, CHUNKS)
    assert stream.headers.get("transfer-encoding") == "chunked"
    assert (empty.status, empty.body) == (204, b"")


def test_wsgi_app_raising_is_a_500_and_the_worker_survives() -> None:
    with harness.running(WSGI_APP, backend="hypercorn") as runner:
        assert get(runner, "/raise").status == 500
        assert_serving(runner)
        harness.wait_for(lambda: "raised on purpose" in runner.log())


def test_wsgi_stop_drains_the_request_in_flight(tmp_path: Path) -> None:
    runner = start("hypercorn", WSGI_APP)
    try:
        barrier = tmp_path / "barrier"
        with start_slow_request(runner, barrier) as conn:
            runner.signal(signal.SIGTERM)
            runner.notify.wait_for("STOPPING=1")
            barrier.touch()
            reply = read_reply(conn)
        assert (reply.status, reply.body) == (200, b"slow done")
        assert runner.wait() == 0, runner.log()
    finally:
        runner.stop()


def test_no_startup_banner() -> None:
    with harness.running("asgi_probe:app", backend="hypercorn") as runner:
        assert_serving(runner)
        assert "Running on" not in runner.log()
        assert "serving: app=asgi_probe:app backend=hypercorn" in runner.log()
