"""The request-head limits, for servers that do not check them all.

``HeadLimits`` is one policy for every backend: a request line longer than
``max_request_line`` gets 414, more than ``max_header_count`` fields or one
field longer than ``max_header_size`` get 431; a field is counted as its
line, ``Name: value`` without the CRLF. wsgiref's parser (``http11``)
applies it as it reads. The other servers are adapted with the pieces
below, each used where its server lets an adapter see the head:

- ``read_field_lines`` reads the header lines from a buffered file, for
  servers that parse with ``readline`` (http.server under werkzeug, gevent's
  pywsgi), so that their own bounds never apply;
- ``check_head`` checks a complete head given as bytes (waitress);
- ``scope_refusal`` checks an ASGI scope, the head as the server's parser
  left it (uvicorn, hypercorn); ``HeadLimited`` puts that check in front
  of an ASGI app and ``refuse`` answers from ASGI.

Each costs one pass over the head and no system call. A head that never
ends is bounded elsewhere: by ``http11.PartialHead`` where we see the bytes
arrive, by the parser's own bound on a buffered head otherwise (h11's
``max_incomplete_event_size``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any, Protocol

from juggler.backends.base import HeadLimits
from juggler.backends.http11 import HttpError

__all__ = [
    "HeadLimited",
    "HttpError",
    "check_head",
    "read_field_lines",
    "refuse",
    "scope_refusal",
]

log = logging.getLogger("juggler.backends.limits")


class LineReader(Protocol):
    """A buffered binary file, as far as reading a head goes."""

    def readline(self, size: int | None = -1, /) -> bytes: ...


def read_field_lines(fp: LineReader, limits: HeadLimits) -> bytes:
    """Read header lines up to the empty one; return them, CRLFs kept.

    The request line must have been read already. A line without a colon
    is refused with 400: the email package, which http.server and pywsgi
    parse the fields with, takes it for the end of the head and would drop
    the fields after it.
    """
    lines: list[bytes] = []
    while True:
        # Room for CRLF plus one byte tells a line at the limit from one over.
        line = fp.readline(limits.max_header_size + 3)
        if line in (b"\r\n", b"\n", b""):
            return b"".join(lines) + b"\r\n"
        if len(line.rstrip(b"\r\n")) > limits.max_header_size:
            raise HttpError(431, f"a header field over {limits.max_header_size} bytes")
        if b":" not in line and line[:1] not in (b" ", b"\t"):
            raise HttpError(400, f"header line without a colon: {line[:40]!r}")
        lines.append(line)
        if len(lines) > limits.max_header_count:
            raise HttpError(431, f"more than {limits.max_header_count} header fields")


def check_head(head: bytes, limits: HeadLimits) -> None:
    """Check a complete head: request line, then fields, CRLF-separated.

    The empty line that ends the head may be included.
    """
    lines = head.split(b"\r\n")
    while len(lines) > 1 and not lines[-1]:
        lines.pop()
    if len(lines[0]) > limits.max_request_line:
        raise HttpError(414, f"request line over {limits.max_request_line} bytes")
    if len(lines) - 1 > limits.max_header_count:
        raise HttpError(431, f"more than {limits.max_header_count} header fields")
    if max(map(len, lines[1:]), default=0) > limits.max_header_size:
        raise HttpError(431, f"a header field over {limits.max_header_size} bytes")


def scope_refusal(scope: dict[str, Any], limits: HeadLimits) -> HttpError | None:
    """Why an ASGI ``http`` scope breaks the limits, or None.

    The request line is rebuilt as ``METHOD SP target SP HTTP/x.y``: h11
    admits no other spacing. A field counts as ``name: value`` with the
    value as the parser trimmed it, so surrounding spaces are not counted;
    a target ending in a bare ``?`` counts one byte short.
    """
    query = scope["query_string"]
    target = len(scope["raw_path"]) + (len(query) + 1 if query else 0)
    line = len(scope["method"]) + target + len(scope["http_version"]) + 7
    if line > limits.max_request_line:
        return HttpError(414, f"request line over {limits.max_request_line} bytes")
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    if len(headers) > limits.max_header_count:
        return HttpError(431, f"more than {limits.max_header_count} header fields")
    if _longest_field(headers) > limits.max_header_size:
        return HttpError(431, f"a header field over {limits.max_header_size} bytes")
    return None


def _longest_field(headers: Iterable[tuple[bytes, bytes]]) -> int:
    return max((len(name) + len(value) + 2 for name, value in headers), default=0)


async def refuse(
    send: Callable[[dict[str, Any]], Awaitable[None]],
    error: HttpError,
    method: str = "GET",
) -> None:
    """Answer ``error`` from ASGI, asking the server to close the connection.

    The request's body is left unread; the close spares the server from
    reading it to find the next request.
    """
    body = HTTPStatus(error.status).phrase.encode() + b"\r\n"
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send(
        {"type": "http.response.start", "status": error.status, "headers": headers}
    )
    if method == "HEAD":
        body = b""
    await send({"type": "http.response.body", "body": body, "more_body": False})


class HeadLimited:
    """An ASGI 3 app behind the head limits: a refused request never reaches it.

    Lifespan and websocket scopes pass through untouched.
    """

    __slots__ = ("app", "limits")

    def __init__(self, app: Any, limits: HeadLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            error = scope_refusal(scope, self.limits)
            if error is not None:
                log_refusal(error, scope.get("client"))
                await refuse(send, error, scope["method"])
                return
        await self.app(scope, receive, send)


def log_refusal(error: HttpError, peer: object) -> None:
    log.info("rejected: %s from %s pid=%d", error, peer or "unix peer", os.getpid())
