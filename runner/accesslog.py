"""Opt-in access log: one line per request, the same for every backend.

Off by default: a line per request costs throughput (Chaussette logged every
request to stdout, which is part of why it was slow). When ``--access-log``
is given, the app is wrapped here instead of relying on each server's own
log, so every backend writes the same greppable line::

    127.0.0.1 "GET /path?q=1 HTTP/1.1" 200 13 0.0012s "curl/8.5.0"

Control characters from the client are escaped, so a request cannot forge
log lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from juggler.backends.base import App, Interface

log = logging.getLogger("juggler.access")

_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"


def escape(text: str) -> str:
    """Make client-supplied text safe to put on one log line."""
    return text.translate(_ESCAPES)


def _line(
    *,
    client: str,
    request: str,
    status: int | str,
    size: int,
    seconds: float,
    agent: str,
) -> None:
    log.info(
        '%s "%s" %s %d %.4fs "%s"',
        client,
        escape(request),
        status,
        size,
        seconds,
        escape(agent),
    )


def wrap_access_log(app: App, interface: Interface) -> App:
    """Return ``app`` wrapped in the access-log middleware for its kind."""
    return _wrap_asgi(app) if interface == "asgi" else _wrap_wsgi(app)


def _wrap_wsgi(app: App) -> App:
    def logged_app(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        status = ["-"]

        def recording_start_response(
            status_line: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, exc_info)

        body = app(environ, recording_start_response)
        return _CountingBody(
            body,
            lambda size: _line(
                client=environ.get("REMOTE_ADDR") or "-",
                request=" ".join(
                    (
                        environ.get("REQUEST_METHOD", "-"),
                        _wsgi_target(environ),
                        environ.get("SERVER_PROTOCOL", "-"),
                    )
                ),
                status=status[0],
                size=size,
                seconds=time.perf_counter() - started,
                agent=environ.get("HTTP_USER_AGENT", "-"),
            ),
        )

    return logged_app


def _wsgi_target(environ: dict[str, Any]) -> str:
    target = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING")
    return f"{target}?{query}" if query else target


class _CountingBody:
    """Passes a WSGI body through, counting bytes; logs when it is closed."""

    def __init__(self, body: Iterable[bytes], done: Callable[[int], None]) -> None:
        self._body = body
        self._done = done
        self._size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._size += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done(self._size)


def _wrap_asgi(app: App) -> App:
    async def logged_app(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = {"status": "-", "size": 0}

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":
                state["size"] += len(message.get("body", b""))
            await send(message)

        try:
            await app(scope, receive, recording_send)
        finally:
            client = scope.get("client")
            headers = dict(scope.get("headers") or ())
            target = scope.get("path", "")
            if scope.get("query_string"):
                target += "?" + scope["query_string"].decode("latin-1")
            method = scope.get("method", "-")
            protocol = "HTTP/" + scope.get("http_version", "1.1")
            _line(
                client=client[0] if client else "-",
                request=f"{method} {target} {protocol}",
                status=state["status"],
                size=state["size"],
                seconds=time.perf_counter() - started,
                agent=headers.get(b"user-agent", b"-").decode("latin-1"),
            )

    return logged_app
