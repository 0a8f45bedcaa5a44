"""The gevent backend, served for real by a runner child on TCP and UNIX."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import harness
import pytest
from conformance import wire

from juggler.backends.base import BackendUnavailable, ServeOptions
from juggler.backends.gevent import GeventBackend

pytest.importorskip("gevent")

APP = "gevent_probe:app"
FAMILIES = ["tcp", "unix"]
HELLO = b"Hello, world!"


def serving(family: str = "tcp", *extra_args: str) -> harness.RunnerProcess:
    runner = harness.RunnerProcess(
        APP, backend="gevent", family=family, extra_args=list(extra_args)
    )
    runner.start()
    return runner


@pytest.fixture(params=FAMILIES)
def runner(request: pytest.FixtureRequest) -> harness.RunnerProcess:
    proc = serving(request.param)
    request.addfinalizer(proc.stop)
    return proc


def connect(runner: harness.RunnerProcess) -> wire.Connection:
    return wire.Connection(runner.connect(timeout=20))


def assert_still_serving(runner: harness.RunnerProcess) -> None:
    with connect(runner) as conn:
        assert conn.request("GET", "/").body == HELLO
    assert runner.poll() is None


# -- requests -------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(
    runner: harness.RunnerProcess,
) -> None:
    with connect(runner) as conn:
        responses = [conn.request("GET", "/environ") for _ in range(3)]
        hello = conn.request("GET", "/")
    assert [r.status for r in responses] == [200, 200, 200]
    assert not any(r.closes for r in responses)
    assert hello.body == HELLO
    # One connection on the server's side too: the same peer each time.
    peers = {(r.json()["REMOTE_ADDR"], r.json()["REMOTE_PORT"]) for r in responses}
    assert len(peers) == 1


def test_post_body_is_echoed(runner: harness.RunnerProcess) -> None:
    body = b"x" * 100_000
    with connect(runner) as conn:
        response = conn.request("POST", "/echo", body=body)
    assert response.status == 200
    assert response.body == body


def test_chunked_request_body_is_echoed(runner: harness.RunnerProcess) -> None:
    head = wire.build_request("POST", "/echo", [("Transfer-Encoding", "chunked")])
    with connect(runner) as conn:
        conn.send(head + wire.chunked([b"hello, ", b"chunked ", b"world"]))
        response = conn.read_response("POST")
    assert response.status == 200
    assert response.body == b"hello, chunked world"


@pytest.mark.parametrize("family", ["tcp", "tcp6", "unix"])
def test_environ_address_conventions(family: str) -> None:
    proc = serving(family)
    try:
        with connect(proc) as conn:
            environ = conn.request("GET", "/environ").json()
            client = conn.sock.getsockname()
        server = proc.address
    finally:
        proc.stop()
    if family == "unix":
        assert environ == {
            "REMOTE_ADDR": "",
            "REMOTE_PORT": None,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
        }
    else:
        host, port = server
        assert environ == {
            "REMOTE_ADDR": client[0],
            "REMOTE_PORT": str(client[1]),
            "SERVER_NAME": host,
            "SERVER_PORT": str(port),
        }


def test_remote_addr_belongs_to_each_connection() -> None:
    proc = serving("tcp")
    try:
        first = _connect_from(proc, "127.0.0.1")
        second = _connect_from(proc, "127.0.0.2")
        with first, second:
            first.request("GET", "/")
            second.request("GET", "/")
            environ = first.request("GET", "/environ").json()
    finally:
        proc.stop()
    assert environ["REMOTE_ADDR"] == "127.0.0.1"


def _connect_from(proc: harness.RunnerProcess, source: str) -> wire.Connection:
    address = proc.address
    assert isinstance(address, tuple)
    sock = socket.create_connection(address, 20, (source, 0))
    return wire.Connection(sock)


def test_app_error_is_500_and_worker_survives(runner: harness.RunnerProcess) -> None:
    with connect(runner) as conn:
        response = conn.request("GET", "/raise")
    assert response.status == 500
    assert_still_serving(runner)
    harness.wait_for(
        lambda: "probe app raised on purpose" in runner.log(), message="traceback"
    )
    assert "juggler.backends.gevent: app error: RuntimeError" in runner.log()


def test_malformed_request_is_rejected_and_worker_survives(
    runner: harness.RunnerProcess,
) -> None:
    with connect(runner) as conn:
        conn.send(b"NOT A REQUEST AT ALL\r\n\r\n")
        response = conn.read_response()
        assert conn.at_eof()
    assert 400 <= response.status < 500
    assert_still_serving(runner)


# -- head limits ----------------------------------------------------------------


def test_long_request_line_gets_414(runner: harness.RunnerProcess) -> None:
    with connect(runner) as conn:
        response = conn.request("GET", "/" + "a" * 4100)
    assert response.status == 414
    assert_still_serving(runner)


def test_request_line_at_the_limit_is_served(runner: harness.RunnerProcess) -> None:
    # "GET " + target + " HTTP/1.1" is exactly 4094 bytes.
    target = "/" + "a" * (4094 - len("GET  HTTP/1.1") - 1)
    with connect(runner) as conn:
        assert conn.request("GET", target).status == 200


def test_too_many_header_fields_get_431(runner: harness.RunnerProcess) -> None:
    # Host is the 100th field; one more is over the limit.
    fields = [(f"X-Field-{i}", "v") for i in range(100)]
    with connect(runner) as conn:
        assert conn.request("GET", "/", fields[:99]).status == 200
        response = conn.request("GET", "/", fields)
    assert response.status == 431


def test_long_header_field_gets_431(runner: harness.RunnerProcess) -> None:
    with connect(runner) as conn:
        response = conn.request("GET", "/", [("X-Long", "v" * 8200)])
    assert response.status == 431
    assert_still_serving(runner)


# -- keep-alive and stopping --------------------------------------------------------


def test_keepalive_timeout_closes_an_idle_connection() -> None:
    proc = serving("tcp", "--keepalive-timeout", "0.5")
    try:
        with connect(proc) as conn:
            assert conn.request("GET", "/").status == 200
            assert conn.at_eof()  # the server closed it; else recv times out
    finally:
        proc.stop()


@pytest.mark.parametrize("family", FAMILIES)
def test_drain_finishes_the_request_in_flight(family: str, tmp_path: Path) -> None:
    proc = serving(family, "--graceful-timeout", "60")
    try:
        conn = connect(proc)
        conn.send(wire.build_request("GET", f"/block?{tmp_path}"))
        harness.wait_for((tmp_path / "started").exists, message="request started")

        proc.signal(signal.SIGTERM)
        proc.notify.wait_for("STOPPING=1")
        (tmp_path / "release").touch()
        response = conn.read_response()
        conn.close()

        assert response.body == b"released"
        assert response.closes  # a draining worker keeps no connection open
        assert proc.wait() == 0
    finally:
        proc.stop()


def test_idle_keepalive_connection_does_not_hold_the_drain() -> None:
    # The graceful timeout is far longer than the wait below: the worker
    # must end because it closed the idle connection, not because it gave up.
    proc = serving("tcp", "--graceful-timeout", "120")
    try:
        with connect(proc) as conn:
            assert conn.request("GET", "/").status == 200
            proc.signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            assert conn.at_eof()
    finally:
        proc.stop()


def test_second_sigint_exits_at_once(tmp_path: Path) -> None:
    proc = serving("tcp", "--graceful-timeout", "120")
    try:
        conn = connect(proc)
        conn.send(wire.build_request("GET", f"/block?{tmp_path}"))
        harness.wait_for((tmp_path / "started").exists, message="request started")
        proc.signal(signal.SIGINT)
        proc.notify.wait_for("STOPPING=1")
        proc.signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 128 + signal.SIGINT
        conn.close()
    finally:
        proc.stop()


# -- monkey-patching ----------------------------------------------------------------


def test_stdlib_is_patched_by_default_without_warning() -> None:
    proc = serving("tcp")
    try:
        with connect(proc) as conn:
            module = conn.request("GET", "/patched").body
        log = proc.log()
    finally:
        proc.stop()
    assert module.startswith(b"gevent.")
    assert "MonkeyPatchWarning" not in log


def test_no_monkey_leaves_the_stdlib_alone() -> None:
    proc = serving("tcp", "--no-monkey")
    try:
        with connect(proc) as conn:
            assert conn.request("GET", "/patched").body == b"socket"
            assert conn.request("GET", "/").body == HELLO
    finally:
        proc.stop()


# -- a missing package ------------------------------------------------------------


def test_missing_gevent_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gevent", None)
    with pytest.raises(BackendUnavailable) as caught:
        GeventBackend().prepare(ServeOptions(monkey_patch=False))
    message = caught.value.message
    assert "pip install 'juggler[gevent]'" in message
    assert "\n" not in message


def test_spawn_bounds_the_requests_served_at_once() -> None:
    # With a pool of one greenlet, two 1-second requests sent together are
    # served one after the other: 2 s at least, where a pool of two takes 1.
    import concurrent.futures
    import time

    extra = ["--spawn", "1"]
    with harness.running(
        "reliability_app:app", backend="gevent", extra_args=extra
    ) as r:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(lambda _: harness.http_get(r.address, "/sleep?s=1"), range(2))
            )
        elapsed = time.monotonic() - started
    assert [status for status, _ in answers] == [200, 200]
    assert elapsed >= 2.0
