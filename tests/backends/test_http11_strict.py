"""http11_strict: the strict head parse put in front of lax servers' parsers.

In-process units; tests/reliability/test_hostile_http.py sends the same
heads to every backend through a real runner.
"""

from __future__ import annotations

import io

import h11
import pytest

from juggler.backends.base import HeadLimits
from juggler.backends.http11 import ClientDisconnected, HttpError
from juggler.backends.http11_strict import (
    buffered_refusal,
    chunked_input,
    field_block,
    overflow_refusal,
    read_head,
    request_line_refusal,
    strict_h11_connection,
)

LIMITS = HeadLimits()
POST = b"POST /p HTTP/1.1\r\nHost: x\r\n"
GOOD = POST + b"Content-Length: 2\r\n\r\nhi"


def _status(error: HttpError | None) -> int | None:
    return None if error is None else error.status


@pytest.mark.parametrize(
    ("buffer", "status"),
    [
        (GOOD, None),
        (b"\r\n" + GOOD, None),  # an empty line before a request is allowed
        (b"GET / HTTP/1.1\r\nHost: x\r\n", None),  # not complete yet
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),  # hypercorn's h2c
        (POST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n", 400),
        (POST + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: x\n\n", 400),  # bare LF, as h11 ends it
        (b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\n b\r\n\r\n", 400),  # folded
        (b"GET /" + b"a" * 4090 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ],
)
def test_buffered_refusal(buffer: bytes, status: int | None) -> None:
    assert _status(buffered_refusal(buffer, LIMITS)) == status


def test_read_head_parses_and_normalises_the_fields() -> None:
    fp = io.BytesIO(b"Host: x\r\nTransfer-Encoding: chunked \r\n\r\nbody")
    request = read_head(fp, b"POST /p HTTP/1.1\r\n", LIMITS)
    assert request.chunked
    assert field_block(request) == "host: x\r\ntransfer-encoding: chunked\r\n\r\n"
    assert fp.read() == b"body"  # nothing past the head was read


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        (b"Host: x\n\r\n", 400),
        (b"Host: x\r\n\n", 400),
        (b"Host: x\r\n", 400),  # the head never ended
        (b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"Host: x\r\nX-Long: " + b"v" * 8191 + b"\r\n\r\n", 431),
    ],
)
def test_read_head_refuses(fields: bytes, status: int) -> None:
    with pytest.raises(HttpError) as refused:
        read_head(io.BytesIO(fields), b"GET / HTTP/1.1\r\n", LIMITS)
    assert refused.value.status == status


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET / HTTP/1.1\r\n", None),
        (b"GET / HTTP/1.1\n", 400),
        (b"THIS IS NOT HTTP\r\n", 400),
        (b"\x16\x03\x01\x02\x00", 400),
        (b"GET / HTTP/2.0\r\n", 505),
        (b"GET /" + b"a" * 4090 + b" HTTP/1.1\r\n", 414),
    ],
)
def test_request_line_refusal(line: bytes, status: int | None) -> None:
    assert _status(request_line_refusal(line, LIMITS)) == status


def test_overflow_refusal_tells_an_endless_line_from_endless_fields() -> None:
    endless_line = b"GET /" + b"a" * LIMITS.max_head_size
    endless_fields = b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 10_000
    assert _status(overflow_refusal(endless_line, LIMITS)) == 414
    assert _status(overflow_refusal(endless_fields, LIMITS)) == 431
    assert overflow_refusal(b"GET / HTTP/1.1\r\n", LIMITS) is None


def test_chunked_input() -> None:
    body = chunked_input(
        io.BufferedReader(io.BytesIO(b"5\r\nhello\r\n0\r\n\r\nNEXT")), LIMITS
    )
    assert body.read() == b"hello"


@pytest.mark.parametrize("chunks", [b"0x5\r\nhello\r\n0\r\n\r\n", b"5\nhello\n0\n\n"])
def test_chunked_input_refuses_a_malformed_body(chunks: bytes) -> None:
    body = chunked_input(io.BufferedReader(io.BytesIO(chunks)), LIMITS)
    with pytest.raises(HttpError):
        body.read()


def test_chunked_input_cut_short_is_a_disconnect() -> None:
    body = chunked_input(io.BufferedReader(io.BytesIO(b"5\r\nhel")), LIMITS)
    with pytest.raises(ClientDisconnected):
        body.read()


def test_strict_h11_connection() -> None:
    connection_class = strict_h11_connection(LIMITS)
    good = connection_class(h11.SERVER)
    good.receive_data(GOOD)
    assert isinstance(good.next_event(), h11.Request)

    bad = connection_class(h11.SERVER)
    bad.receive_data(b"GET / HTTP/1.1\nHost: x\n\n")
    for _ in range(2):  # refused again, never parsed after it
        with pytest.raises(h11.RemoteProtocolError) as refused:
            bad.next_event()
        assert refused.value.error_status_hint == 400
    assert bad.refusal is not None
