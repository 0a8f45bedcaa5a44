"""Exchanges that need a runner of their own: graceful drain, IPv6."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import harness
import pytest
from conformance_wsgi import HELLO

from conformance import wire
from conformance.conftest import TARGETS, TCP6_TARGETS, Target, own_runner

GRACEFUL_TIMEOUT = 10.0
# How long past the graceful timeout the runner may take to exit: the
# interpreter's own shutdown, on a busy shared machine.
EXIT_MARGIN = 10.0
QUIET_MARKER = "no-request-line-for-this"


def _socket_still_listens(sock: socket.socket) -> bool:
    """Connect to the test's own socket and accept the connection on it."""
    address = sock.getsockname()
    with socket.socket(sock.family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(address)
        sock.settimeout(5)
        accepted, _ = sock.accept()
        accepted.close()
    return True


@pytest.mark.parametrize("target", TARGETS, ids=str)
@pytest.mark.exchange("graceful_drain")
def test_sigterm_drains_the_request_in_flight_and_leaves_the_socket(
    target: Target, tmp_path: Path
) -> None:
    barrier = str(tmp_path / "barrier")
    extra = ("--graceful-timeout", str(GRACEFUL_TIMEOUT))
    with own_runner(target, extra) as served:
        runner = served.runner
        quiet = served.request("GET", f"/hello?{QUIET_MARKER}")
        assert quiet.status == 200

        slow = served.connect()
        slow.send(wire.build_request("GET", f"/slow?barrier={barrier}"))
        harness.wait_for(
            lambda: os.path.exists(barrier + ".started"), message="/slow in flight"
        )

        # The signal is pending in the runner before the barrier exists, so
        # the request is in flight when the stop begins. Waiting here for
        # STOPPING=1 would ask too much of a server whose only thread is
        # inside the app until it returns (meinheld): it sees the signal then.
        runner.signal(signal.SIGTERM)
        open(barrier, "w").close()  # let the request in flight finish
        with slow:
            response = slow.read_response()
        code = runner.wait(GRACEFUL_TIMEOUT + EXIT_MARGIN)
        log = runner.log()
        runner.notify.wait_for("STOPPING=1", timeout=1)  # sent before exit

        assert response.status == 200, log
        assert response.body == b"slow done"
        assert code == 0, log
        assert runner.sock is not None
        assert _socket_still_listens(runner.sock)
        if target.family == "unix":
            assert os.path.exists(served.unix_path or "")
        # No per-request line unless --access-log is given.
        assert QUIET_MARKER not in log, log


@pytest.mark.parametrize("target", TCP6_TARGETS, ids=str)
@pytest.mark.exchange("tcp6")
def test_hello_over_ipv6(target: Target) -> None:
    with own_runner(target) as served:
        hello = served.request("GET", "/hello")
        environ = served.request("GET", "/environ").json()

    assert hello.status == 200
    assert hello.body == HELLO
    assert environ["REMOTE_ADDR"] == "::1"
    assert environ["SERVER_NAME"] == "::1"
