"""The meinheld backend, served for real by a runner child on TCP and UNIX."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import harness
import meinheld  # noqa: F401  (CI installs every backend: a broken one fails)
import pytest
from conformance import wire

from juggler.backends.base import BackendUnavailable, ServeOptions
from juggler.backends.meinheld import MeinheldBackend

APP = "meinheld_probe:app"
FAMILIES = ["tcp", "unix"]
HELLO = b"Hello, world!"


def serving(family: str = "tcp", *extra_args: str) -> harness.RunnerProcess:
    runner = harness.RunnerProcess(
        APP, backend="meinheld", family=family, extra_args=list(extra_args)
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
    # chaussette ran meinheld with keep-alive off; the runner keeps it on.
    assert not any(r.closes for r in responses)
    assert hello.body == HELLO
    peers = {(r.json()["REMOTE_ADDR"], r.json()["REMOTE_PORT"]) for r in responses}
    assert len(peers) == 1


def test_post_body_is_echoed(runner: harness.RunnerProcess) -> None:
    body = b"x" * 100_000
    with connect(runner) as conn:
        response = conn.request("POST", "/echo", body=body)
    assert response.status == 200
    assert response.body == body


def test_body_over_meinheld_default_cap_is_accepted() -> None:
    # meinheld answers 413 past 16 MiB by default; the runner lifts the cap.
    body = b"y" * (17 * 1024 * 1024)
    proc = serving("tcp")
    try:
        with connect(proc) as conn:
            response = conn.request("POST", "/length", body=body)
    finally:
        proc.stop()
    assert response.status == 200
    assert response.body == str(len(body)).encode()


@pytest.mark.parametrize("family", FAMILIES)
def test_requests_after_large_responses_on_one_connection(family: str) -> None:
    # Left to itself, meinheld (with greenlet 3) answers the request that
    # follows such a response with 500 or a reset, and soon dies of SIGSEGV;
    # the adapter makes writes blocking to keep out of that path.
    size = 8 * 1024 * 1024
    proc = serving(family)
    try:
        for _ in range(3):
            with connect(proc) as conn:
                assert len(conn.request("GET", f"/bytes?{size}").body) == size
                assert conn.request("GET", "/").body == HELLO
        assert_still_serving(proc)
    finally:
        proc.stop()


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
        # meinheld alone says 127.0.0.1:8000 for the server, and 0.0.0.0
        # for any IPv6 peer.
        host, port = server
        assert environ == {
            "REMOTE_ADDR": client[0],
            "REMOTE_PORT": str(client[1]),
            "SERVER_NAME": host,
            "SERVER_PORT": str(port),
        }


def test_remote_addr_belongs_to_each_connection() -> None:
    # meinheld alone reports, on a kept-alive connection, the address of the
    # peer that connected last.
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


def test_remote_addr_is_fresh_when_a_descriptor_is_reused() -> None:
    # The adapter reads the peer once per connection and keeps it by
    # descriptor; one connection after another, each closed before the next
    # opens, gets the worker's same descriptor back, and must not inherit
    # the address of the one before.
    proc = serving("tcp")
    seen = []
    try:
        for source in ["127.0.0.1", "127.0.0.2"] * 4:
            with _connect_from(proc, source) as conn:
                environ = conn.request("GET", "/environ").json()
                seen.append((source, environ["REMOTE_ADDR"]))
    finally:
        proc.stop()
    assert all(source == remote for source, remote in seen), seen


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
    assert "juggler.backends.meinheld: app error: RuntimeError" in runner.log()


def test_malformed_request_is_rejected_and_worker_survives(
    runner: harness.RunnerProcess,
) -> None:
    with connect(runner) as conn:
        conn.send(b"NOT A REQUEST AT ALL\r\n\r\n")
        response = conn.read_response()
        assert conn.at_eof()
    assert 400 <= response.status < 500
    assert_still_serving(runner)


def test_head_limits_are_meinheld_own(runner: harness.RunnerProcess) -> None:
    """meinheld cannot apply HeadLimits; this records what it does instead."""
    with connect(runner) as conn:
        # Over the runner's 4094-byte request line, within meinheld's 8 KiB.
        assert conn.request("GET", "/" + "a" * 5000).status == 200
        # 101 fields: over the runner's 100, within meinheld's 128.
        fields = [(f"X-Field-{i}", "v") for i in range(100)]
        assert conn.request("GET", "/", fields).status == 200
    with connect(runner) as conn:
        # Over meinheld's 8 KiB target: 400 where the runner wants 414.
        assert conn.request("GET", "/" + "a" * 9000).status == 400
    assert_still_serving(runner)


# -- keep-alive and stopping --------------------------------------------------------


def test_keepalive_timeout_closes_an_idle_connection() -> None:
    proc = serving("tcp", "--keepalive-timeout", "1")
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

        # The app holds meinheld's only thread; the watch thread reports
        # the drain all the same, before the request is answered.
        proc.signal(signal.SIGTERM)
        proc.notify.wait_for("STOPPING=1")
        (tmp_path / "release").touch()
        response = conn.read_response()
        conn.close()

        assert response.body == b"released"
        assert proc.wait() == 0
        assert "cut: " not in proc.log()
    finally:
        proc.stop()


@pytest.mark.parametrize("family", FAMILIES)
def test_request_past_the_graceful_timeout_is_cut(family: str, tmp_path: Path) -> None:
    # The barrier is never released: only the graceful timeout ends the
    # request, although it holds meinheld's only thread all along.
    graceful_timeout = 2.0
    proc = serving(family, "--graceful-timeout", str(graceful_timeout))
    try:
        conn = connect(proc)
        conn.send(wire.build_request("GET", f"/block?{tmp_path}"))
        harness.wait_for((tmp_path / "started").exists, message="request started")

        signalled = time.monotonic()
        proc.signal(signal.SIGTERM)
        proc.notify.wait_for("STOPPING=1")
        # Bounded: the graceful timeout plus a margin for a loaded machine.
        assert proc.wait(timeout=graceful_timeout + 3) == 0
        assert time.monotonic() - signalled >= graceful_timeout - 0.5
        assert conn.at_eof()
        conn.close()
        assert "cut: requests still in the app after graceful_timeout=2s" in (
            proc.log()
        )
    finally:
        proc.stop()


def test_sigquit_exits_at_once_while_the_app_holds_the_thread(
    tmp_path: Path,
) -> None:
    proc = serving("tcp", "--graceful-timeout", "120")
    try:
        conn = connect(proc)
        conn.send(wire.build_request("GET", f"/block?{tmp_path}"))
        harness.wait_for((tmp_path / "started").exists, message="request started")
        proc.signal(signal.SIGQUIT)
        assert proc.wait(timeout=10) == 128 + signal.SIGQUIT
        conn.close()
    finally:
        proc.stop()


def test_stop_without_connections_exits_zero() -> None:
    proc = serving("unix", "--graceful-timeout", "120")
    try:
        assert_still_serving(proc)
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stop requested: signal=SIGTERM" in proc.log()
    finally:
        proc.stop()


def test_second_sigint_exits_at_once() -> None:
    # An idle keep-alive connection holds meinheld's drain (a known
    # shortcoming), which leaves time for the operator's second SIGINT.
    proc = serving("tcp", "--graceful-timeout", "120")
    try:
        with connect(proc) as conn:
            assert conn.request("GET", "/").status == 200
            proc.signal(signal.SIGINT)
            proc.notify.wait_for("STOPPING=1")
            proc.signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 128 + signal.SIGINT
    finally:
        proc.stop()


# -- monkey-patching ----------------------------------------------------------------


@pytest.mark.parametrize("extra", [(), ("--no-monkey",)], ids=["default", "no-monkey"])
def test_stdlib_is_never_patched(extra: tuple[str, ...]) -> None:
    # meinheld's patch would swap in sockets that fail under greenlet 3.
    proc = serving("tcp", *extra)
    try:
        with connect(proc) as conn:
            assert conn.request("GET", "/patched").body == b"socket"
    finally:
        proc.stop()


# -- a missing package ------------------------------------------------------------


def test_missing_meinheld_names_the_extra_and_the_pin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "meinheld.server", None)
    with pytest.raises(BackendUnavailable) as caught:
        MeinheldBackend().prepare(ServeOptions())
    message = caught.value.message
    assert "pip install 'juggler[meinheld]'" in message
    assert "pip install --no-deps meinheld==1.0.2" in message
    assert "\n" not in message
