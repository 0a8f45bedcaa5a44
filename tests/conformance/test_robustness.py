"""Bad input stays with the request that brought it; the runner serves on."""

from __future__ import annotations

import socket

import harness
import pytest
from conformance_wsgi import HELLO

from conformance import wire
from conformance.conftest import Served


def _answer_or_close(conn: wire.Connection) -> int | None:
    """The status the server answered with, or None if it just closed."""
    try:
        return conn.read_response().status
    except (wire.ConnectionClosed, ConnectionResetError):
        return None


def _still_serving(served: Served) -> None:
    response = served.request("GET", "/hello")
    assert response.status == 200
    assert response.body == HELLO


@pytest.mark.exchange("app_raises")
def test_exception_in_app_is_a_500_and_the_runner_serves_on(
    served: Served,
) -> None:
    with served.connect() as conn:
        conn.send(wire.build_request("GET", "/raise"))
        status = _answer_or_close(conn)

    assert status == 500
    _still_serving(served)
    harness.wait_for(
        lambda: "raised on purpose by /raise" in served.runner.log(),
        message="the app's traceback in the runner's log",
    )


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"THIS IS NOT HTTP AT ALL\r\n\r\n",
            id="garbage-line",
            marks=pytest.mark.exchange("malformed_request_line"),
        ),
        pytest.param(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            id="tls-hello",
            marks=pytest.mark.exchange("malformed_tls_hello"),
        ),
        pytest.param(
            b"GET /hello HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
            id="header-without-colon",
            marks=pytest.mark.exchange("malformed_header"),
        ),
    ],
)
def test_malformed_request_is_refused_and_the_runner_serves_on(
    served: Served, request_bytes: bytes
) -> None:
    with served.connect() as conn:
        conn.send(request_bytes)
        # A TLS hello has no line end: say we are done so the server sees EOF.
        conn.sock.shutdown(socket.SHUT_WR)
        status = _answer_or_close(conn)

    assert status is None or 400 <= status < 500, status
    _still_serving(served)
