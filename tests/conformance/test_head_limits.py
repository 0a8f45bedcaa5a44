"""The request-head policy (backends.base.HeadLimits), on every backend.

A request line over 4094 bytes gets 414; more than 100 header fields, or
one field (its line, ``Name: value``) over 8190 bytes, get 431; a request
exactly at each limit is served; a head that never ends is cut off before
the client has sent much of it. The Host field that ``wire`` adds counts.
"""

from __future__ import annotations

import socket

import pytest
from conformance_wsgi import HELLO

from conformance import wire
from conformance.conftest import Served
from juggler.backends.base import HeadLimits

LIMITS = HeadLimits()
# "GET " + target + " HTTP/1.1"
LINE_OVERHEAD = len("GET  HTTP/1.1")
# How much of a head that never ends the client offers. A server that keeps
# it all is not bounded in any sense that protects a worker.
ENDLESS = 8 * 1024 * 1024
ENDLESS_TIMEOUT = 10.0


def _target_of_line(length: int) -> str:
    """A target under /environ whose request line is ``length`` bytes."""
    prefix = "/environ/"
    return prefix + "a" * (length - LINE_OVERHEAD - len(prefix))


def _fields(count: int) -> list[wire.Header]:
    """``count`` fields in all, Host included."""
    return [(f"X-Field-{i}", "v") for i in range(count - 1)]


def _long_field(size: int) -> list[wire.Header]:
    """One field whose line, ``X-Long: value``, is ``size`` bytes."""
    return [("X-Long", "v" * (size - len("X-Long: ")))]


def _still_serving(served: Served) -> None:
    response = served.request("GET", "/hello")
    assert (response.status, response.body) == (200, HELLO)


def _assert_refused(
    served: Served, target: str, headers: list[wire.Header], status: int
) -> None:
    """The request gets ``status``, the connection is closed after it."""
    with served.connect() as conn:
        response = conn.request("GET", target, headers=headers)
        assert response.status == status, response.body[:200]
        # Nothing sent behind a refused head may be read as a request.
        assert conn.at_eof(), f"open after {response.status} {response.reason}"
    _still_serving(served)


def _environ_at_limit(served: Served, target: str, headers: list[wire.Header]) -> dict:
    response = served.request("GET", target, headers=headers)
    assert response.status == 200, response.body[:200]
    answer: dict = response.json()
    return answer


@pytest.mark.exchange("limit_request_line")
def test_request_line_over_the_limit_gets_414(served: Served) -> None:
    target = _target_of_line(LIMITS.max_request_line + 1)
    _assert_refused(served, target, [], 414)


@pytest.mark.exchange("limit_request_line")
def test_target_of_4095_bytes_gets_414(served: Served) -> None:
    _assert_refused(served, "/" + "a" * 4094, [], 414)


@pytest.mark.exchange("limit_header_count")
def test_more_header_fields_than_the_limit_get_431(served: Served) -> None:
    _assert_refused(served, "/hello", _fields(LIMITS.max_header_count + 1), 431)


@pytest.mark.exchange("limit_header_size")
def test_header_field_over_the_limit_gets_431(served: Served) -> None:
    _assert_refused(served, "/hello", _long_field(LIMITS.max_header_size + 1), 431)


@pytest.mark.exchange("at_head_limits")
def test_request_line_at_the_limit_is_served(served: Served) -> None:
    target = _target_of_line(LIMITS.max_request_line)
    environ = _environ_at_limit(served, target, [])
    assert environ["PATH_INFO"] == target


@pytest.mark.exchange("at_head_limits")
def test_as_many_fields_as_the_limit_are_served(served: Served) -> None:
    environ = _environ_at_limit(served, "/environ", _fields(LIMITS.max_header_count))
    fields = [key for key in environ["headers"] if key.startswith("HTTP_X_FIELD_")]
    assert len(fields) == LIMITS.max_header_count - 1


@pytest.mark.exchange("at_head_limits")
def test_field_at_the_limit_is_served(served: Served) -> None:
    headers = _long_field(LIMITS.max_header_size)
    environ = _environ_at_limit(served, "/environ", headers)
    assert environ["headers"]["HTTP_X_LONG"] == headers[0][1]


@pytest.mark.parametrize(
    ("start", "filler"),
    [
        pytest.param(b"GET /", b"a" * 65536, id="request-line"),
        pytest.param(
            b"GET / HTTP/1.1\r\n", b"X-Filler: 1234567\r\n" * 3277, id="fields"
        ),
        pytest.param(b"GET / HTTP/1.1\r\nX-Endless: ", b"v" * 65536, id="one-field"),
    ],
)
@pytest.mark.exchange("endless_head")
def test_head_that_never_ends_is_cut_off(
    served: Served, start: bytes, filler: bytes
) -> None:
    """The server refuses, or stops reading, long before the client is done.

    A server that buffered the head whole would read all of it and answer
    nothing, waiting for an end that never comes.
    """
    with served.connect(timeout=ENDLESS_TIMEOUT) as conn:
        conn.send(start)
        sent = _send_until_refused(conn.sock, filler)
        status = _status_or_none(conn)

    assert sent < ENDLESS or (status is not None and 400 <= status < 500), (
        f"{sent} bytes of head read, then {status}"
    )
    _still_serving(served)


def _send_until_refused(sock: socket.socket, filler: bytes) -> int:
    """Bytes sent before the server closed or stopped reading."""
    sent = 0
    try:
        while sent < ENDLESS:
            sock.sendall(filler)
            sent += len(filler)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    return sent


def _status_or_none(conn: wire.Connection) -> int | None:
    try:
        return conn.read_response().status
    except (wire.ConnectionClosed, ConnectionResetError, TimeoutError):
        return None
