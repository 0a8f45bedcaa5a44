"""The app of the hostile-HTTP scenarios: the conformance app, recorded.

Every request that reaches the app is first written, one line each, to the
file named by ``$HOSTILE_RECORD`` (``METHOD target``, control characters
escaped), so a scenario can tell which requests a server passed on: a
request smuggled behind a refused one must never appear there. Then the
conformance app answers (conformance_wsgi.py lists its routes), except for:

- ``/bad-header?kind=cr|lf|crlf|nul``: a response header whose value holds
  that control character; the server must answer 500 and never emit it;
- ``/headers``: JSON of what the server gave the app: the environ's
  ``HTTP_*`` keys (WSGI) or the scope's raw header names and values (ASGI).

``wsgi`` and ``asgi`` are the two apps (``hostile_http:wsgi``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from conformance_asgi import app as conformance_asgi
from conformance_wsgi import app as conformance_wsgi
from conformance_wsgi import query

BAD_VALUES = {"cr": "a\rb", "lf": "a\nb", "crlf": "a\r\nInjected: yes", "nul": "a\0b"}

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def record(method: str, target: str) -> None:
    """Append one line for a request the app saw; O_APPEND keeps lines whole."""
    path = os.environ.get("HOSTILE_RECORD")
    if not path:
        return
    line = f"{method} {target}".encode("unicode_escape") + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _json(answer: object) -> tuple[bytes, list[tuple[str, str]]]:
    body = json.dumps(answer, sort_keys=True).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    return body, headers


def wsgi(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    target = path + (
        "?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else ""
    )
    record(environ.get("REQUEST_METHOD", "?"), target)
    if path == "/bad-header":
        kind = query(environ.get("QUERY_STRING", "")).get("kind", "cr")
        start_response("200 OK", [("Content-Length", "2"), ("X-Bad", BAD_VALUES[kind])])
        return [b"ok"]
    if path == "/headers":
        fields = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        body, headers = _json({"environ": fields})
        start_response("200 OK", headers)
        return [body]
    return conformance_wsgi(environ, start_response)  # type: ignore[no-any-return]


async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        await conformance_asgi(scope, receive, send)
        return
    path = scope["path"]
    query_string = scope.get("query_string", b"").decode("latin-1")
    record(scope["method"], path + ("?" + query_string if query_string else ""))
    if path == "/bad-header":
        kind = query(query_string).get("kind", "cr")
        bad = BAD_VALUES[kind].encode("latin-1")
        headers = [(b"content-length", b"2"), (b"x-bad", bad)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if path == "/headers":
        raw = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        body, fields = _json({"scope": raw})
        encoded = [(k.lower().encode(), v.encode()) for k, v in fields]
        await send({"type": "http.response.start", "status": 200, "headers": encoded})
        await send({"type": "http.response.body", "body": body})
        return
    await conformance_asgi(scope, receive, send)
