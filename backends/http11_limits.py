"""The request-head limits on ASGI scopes, and a guard for ASGI responses.

``HeadLimits`` is one policy for every backend: a request line longer than
``max_request_line`` gets 414, more than ``max_header_count`` fields or one
field longer than ``max_header_size`` get 431; a field is counted as its
line, ``Name: value`` without the CRLF. Where an adapter sees the head's
bytes, ``http11`` applies it as it parses (``http11_strict`` puts that parse
in front of other servers' parsers). What is left is here:

- ``scope_refusal`` checks an ASGI scope, the head as the server's parser
  left it (hypercorn's WSGI side), and ``refuse`` answers from ASGI;
- ``AsgiGuard`` puts that check in front of an ASGI app, and checks the
  head of the app's response: a status line or a field with CR, LF or NUL
  in it would let a client's input write headers of its own (response
  splitting). uvicorn and hypercorn then drop the connection without an
  answer; here the app's ``send`` raises instead, and the server answers
  500 as for any app error.

Each costs one pass over the head and no system call. A head that never
ends is bounded elsewhere: by ``http11.PartialHead`` where we see the bytes
arrive, by the parser's own bound on a buffered head otherwise (h11's
``max_incomplete_event_size``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any, Protocol

from juggler.backends.base import HeadLimits
from juggler.backends.http11 import HttpError

__all__ = [
    "AsgiGuard",
    "HttpError",
    "LineReader",
    "refuse",
    "scope_refusal",
]

log = logging.getLogger("juggler.backends.limits")

Send = Callable[[dict[str, Any]], Awaitable[None]]
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class LineReader(Protocol):
    """A buffered binary file, as far as reading a head goes."""

    def readline(self, size: int | None = -1, /) -> bytes: ...


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


class AsgiGuard:
    """An ASGI 3 app behind the head limits, its response head checked.

    A refused request never reaches the app. Lifespan and websocket scopes
    pass through untouched.
    """

    __slots__ = ("app", "limits")

    def __init__(self, app: Any, limits: HeadLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = scope_refusal(scope, self.limits)
        if error is not None:
            log_refusal(error, scope.get("client"))
            await refuse(send, error, scope["method"])
            return
        await self.app(scope, receive, _checked(send))


def _checked(send: Send) -> Send:
    async def checked_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            check_asgi_response_head(message)
        await send(message)

    return checked_send


def check_asgi_response_head(message: dict[str, Any]) -> None:
    """Raise ValueError for a response field that would break HTTP."""
    for name, value in message.get("headers", ()):
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid response header name {name!r}")
        if _CONTROL.search(value):
            raise ValueError(f"invalid value for response header {name!r}: {value!r}")


def log_refusal(error: HttpError, peer: object) -> None:
    log.info("rejected: %s from %s pid=%d", error, peer or "unix peer", os.getpid())
