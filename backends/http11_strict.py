"""One strict reading of a request head, for servers whose parsers are lax.

A proxy in front and the server behind it must agree on where each request
ends, or a request can hide inside another's body (request smuggling).
gevent's pywsgi, http.server under werkzeug, waitress and h11 (under
uvicorn and hypercorn) each let some ambiguous heads through: two
Content-Lengths, a Content-Length beside a Transfer-Encoding, a coding other
than a final ``chunked``, bare LF line ends, folded lines. ``http11``'s
parser refuses all of them (400, or 501 for a coding it does not know), with
the head limits (414, 431) on the way; the pieces below put that parser in
front of each server's own, where the adapter can see the head's bytes:

- ``read_head`` reads the fields from a buffered file, after the request
  line, for servers that parse with ``readline`` (gevent, werkzeug;
  ``request_line_refusal`` checks the line alone, for werkzeug), and
  ``field_block`` gives their header parser the fields as ``http11`` read
  them, so both act on the same values;
- ``buffered_refusal`` looks at a receive buffer that starts with a head,
  for servers that buffer a whole head before parsing it, and
  ``strict_h11_connection`` is h11's connection with that check before it
  parses each head (uvicorn, hypercorn);
- ``refusal`` checks a complete head given as bytes (waitress);
- ``chunked_input`` reads a chunked body from a buffered file as strictly
  as ``http11_body`` does (werkzeug's own reader takes ``0x5`` or a bare LF).

Each costs one pass of ``http11.parse_head`` per request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

from juggler.backends.base import HeadLimits
from juggler.backends.http11 import (
    ClientDisconnected,
    HttpError,
    Reader,
    Request,
    parse_head,
    parse_request_line,
)
from juggler.backends.http11_body import Body, ChunkedBody
from juggler.backends.http11_limits import LineReader

__all__ = [
    "HttpError",
    "buffered_refusal",
    "chunked_input",
    "field_block",
    "overflow_refusal",
    "read_head",
    "refusal",
    "request_line_refusal",
    "strict_h11_connection",
]

# The start of an HTTP/2 connection with prior knowledge (RFC 9113, 3.4),
# which hypercorn takes over from its HTTP/1.1 parser.
H2_PREFACE = b"PRI * HTTP/2.0\r\n"


def read_head(fp: LineReader, request_line: bytes, limits: HeadLimits) -> Request:
    """Read the fields after ``request_line`` (CRLF kept) and parse the head.

    Reads up to the empty line, whatever ends it, so that a refused head is
    read whole; stops early, with 431, at a field or a count over the
    limits. Raises ``HttpError`` for any head ``http11`` refuses.
    """
    lines = [request_line]
    while True:
        # Room for CRLF plus one byte tells a line at the limit from one over.
        line = fp.readline(limits.max_header_size + 3)
        if line in (b"\r\n", b"\n", b""):
            break
        if len(line.rstrip(b"\r\n")) > limits.max_header_size:
            raise HttpError(431, f"a header field over {limits.max_header_size} bytes")
        lines.append(line)
        if len(lines) - 1 > limits.max_header_count:
            raise HttpError(431, f"more than {limits.max_header_count} header fields")
    head = b"".join(lines)
    if line != b"\r\n" or not head.endswith(b"\r\n"):
        raise HttpError(400, "request head not ended by CRLF CRLF")
    # parse_head refuses any bare CR or LF left inside.
    return parse_head(head[:-2], limits)


def request_line_refusal(line: bytes, limits: HeadLimits) -> HttpError | None:
    """Why a request line, its CRLF included, is refused, or None."""
    if not line.endswith(b"\r\n"):
        return HttpError(400, "request line not ended by CRLF")
    return _refusal_of(parse_request_line, line[:-2], limits)


def field_block(request: Request) -> str:
    """The fields of a parsed head, one ``name: value`` line each.

    Values come as ``http11`` read them, trimmed of surrounding whitespace:
    given the raw lines, pywsgi would see ``chunked `` where ``http11`` saw
    ``chunked``, and read the chunks as the next request.
    """
    return (
        "".join(
            f"{name.decode('latin-1')}: {value.decode('latin-1')}\r\n"
            for name, value in request.headers
        )
        + "\r\n"
    )


def refusal(head: bytes, limits: HeadLimits) -> HttpError | None:
    """Why a complete head (its final empty line included or not) is refused."""
    if head.endswith(b"\r\n\r\n"):
        head = head[:-4]
    elif head.endswith(b"\r\n"):
        head = head[:-2]
    return _refusal_of(parse_head, head, limits)


def buffered_refusal(buffer: bytes, limits: HeadLimits) -> HttpError | None:
    """Why the complete head at the start of ``buffer`` is refused, or None.

    h11 ends a head at the first empty line, CRLF or bare LF; the same line
    ends it here, so a bare-LF head is seen as h11 would read it, and
    refused. A head not complete yet passes: h11 bounds its size.
    """
    start = 0
    while buffer.startswith(b"\r\n", start):
        start += 2
    end = _empty_line(buffer, start)
    if end < 0 or buffer.startswith(H2_PREFACE, start):
        return None
    head = buffer[start:end]
    if not head.endswith(b"\r\n"):
        return HttpError(400, "bare LF in the request head")
    return _refusal_of(parse_head, head[:-2], limits)


def _refusal_of(
    parse: Callable[[bytes, HeadLimits], object], data: bytes, limits: HeadLimits
) -> HttpError | None:
    """The error ``parse`` raises for ``data``, or None if it takes it."""
    try:
        parse(data, limits)
    except HttpError as exc:
        return exc
    return None


@functools.cache
def strict_h11_connection(limits: HeadLimits) -> type[Any]:
    """h11's ``Connection``, refusing a head that ``buffered_refusal`` does.

    The check runs whenever h11 waits for a new head (its peer is IDLE),
    pipelined ones included. A refused head raises h11's own
    ``RemoteProtocolError``, with the status as its hint, which the servers
    already answer and close on; the refusal is kept (``refusal``), so the
    head is never parsed after it. A head past h11's bound is refused the
    same way, with 414 when its request line has no end within the limit
    (h11 hints 431 for any). Built on first use: h11 is not always installed.
    """
    import h11

    class StrictConnection(h11.Connection):
        refusal: HttpError | None = None

        def next_event(self) -> Any:
            if self.their_state is h11.IDLE:
                if self.refusal is None:
                    self.refusal = buffered_refusal(self.trailing_data[0], limits)
                if self.refusal is not None:
                    raise self._refused()
            try:
                return super().next_event()
            except h11.RemoteProtocolError as exc:
                self.refusal = overflow_refusal(self.trailing_data[0], limits)
                if self.refusal is None:
                    raise
                raise self._refused() from exc

        def _refused(self) -> h11.RemoteProtocolError:
            assert self.refusal is not None
            status = self.refusal.status
            return h11.RemoteProtocolError(self.refusal.detail, status)

    return StrictConnection


def overflow_refusal(buffer: bytes, limits: HeadLimits) -> HttpError | None:
    """The refusal for a head past its bound, or None if ``buffer`` is not one.

    Only an error path pays for this look at the buffer.
    """
    if len(buffer) <= limits.max_head_size or b"\r\n\r\n" in buffer:
        return None
    line_end = buffer.lstrip(b"\r\n").find(b"\r\n")
    if line_end < 0 or line_end > limits.max_request_line:
        return HttpError(414, "request line too long (head past its bound)")
    return HttpError(431, "request head past its bound")


def _empty_line(buffer: bytes, start: int) -> int:
    """Where the empty line ending a head begins (h11's way), or -1."""
    ends = [
        found + 1
        for found in (buffer.find(b"\n\r\n", start), buffer.find(b"\n\n", start))
        if found >= 0
    ]
    return min(ends, default=-1)


class BufferedFile(Protocol):
    """A buffered binary file, as far as reading a body goes."""

    def read1(self, size: int = -1, /) -> bytes: ...


def chunked_input(fp: BufferedFile, limits: HeadLimits) -> Body:
    """``wsgi.input`` for a chunked body read from ``fp``.

    A malformed body raises ``HttpError`` (400) in the app that reads it;
    an end of file in the middle of it, ``ClientDisconnected``.
    """
    return ChunkedBody(_FileReader(fp), limits)


class _FileReader(Reader):
    """``http11``'s receive buffer, filled from a buffered file."""

    __slots__ = ("_fp",)

    def __init__(self, fp: BufferedFile) -> None:
        self._fp = fp
        self.buf = bytearray()

    def _recv(self, most: int) -> bytes:
        try:
            data = self._fp.read1(most)
        except OSError as exc:
            raise ClientDisconnected(f"reading the body: {exc}") from exc
        if not data:
            raise ClientDisconnected("closed in the middle of a body")
        return data
