"""The ASGI twin of conformance_wsgi.py: the same routes, the same answers.

The scope is mapped onto the WSGI names so that the corpus asserts one
shape for both kinds of backend. The mapping is the one PEP 3333 and the
ASGI spec imply: PATH_INFO is the decoded path as UTF-8 bytes read as
latin-1, RAW_URI is ``raw_path`` plus the query string, a UNIX-socket peer
(``client`` None) has ``REMOTE_ADDR = ""`` and a UNIX-socket server
(``server`` port None) is ``localhost:80``. The raw ``server`` and ``client``
are added under ``"scope"`` so tests can check them as well.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from conformance_wsgi import (
    HELLO,
    SLOW_GIVE_UP,
    SLOW_POLL,
    STREAM_CHUNKS,
    echo_answer,
    pattern,
    query,
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _respond(
    send: Send, status: int, body: bytes, content_type: str = "text/plain"
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, answer: object) -> None:
    body = json.dumps(answer, sort_keys=True).encode()
    await _respond(send, 200, body, "application/json")


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _header(scope: Scope, name: bytes) -> str | None:
    values = [value for key, value in scope["headers"] if key.lower() == name]
    return b",".join(values).decode("latin-1") if values else None


def environ_answer(scope: Scope) -> dict[str, Any]:
    server = scope.get("server") or (None, None)
    client = scope.get("client")
    query_string = scope.get("query_string", b"").decode("latin-1")
    answer: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", ""),
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": query_string,
        "SERVER_NAME": server[0] if server[1] is not None else "localhost",
        "SERVER_PORT": str(server[1]) if server[1] is not None else "80",
        "REMOTE_ADDR": client[0] if client else "",
        "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "scope": {"server": server, "client": client},
    }
    if client:
        answer["REMOTE_PORT"] = str(client[1])
    if scope.get("raw_path") is not None:
        raw = scope["raw_path"].decode("latin-1")
        answer["RAW_URI"] = raw + (f"?{query_string}" if query_string else "")
    for name, key in (
        (b"content-type", "CONTENT_TYPE"),
        (b"content-length", "CONTENT_LENGTH"),
    ):
        value = _header(scope, name)
        if value is not None:
            answer[key] = value
    answer["headers"] = _http_headers(scope)
    return answer


def _http_headers(scope: Scope) -> dict[str, str]:
    names = {key.lower() for key, _ in scope["headers"]}
    names -= {b"content-type", b"content-length"}
    headers: dict[str, str] = {}
    for name in names:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        headers[key] = _header(scope, name) or ""
    return headers


async def _slow(scope: Scope, send: Send) -> None:
    barrier = query(scope.get("query_string", b"").decode("latin-1")).get("barrier")
    if not barrier:
        await _respond(send, 400, b"barrier=PATH missing")
        return
    with open(barrier + ".started", "w"):
        pass
    deadline = time.monotonic() + SLOW_GIVE_UP
    while not os.path.exists(barrier):
        if time.monotonic() > deadline:
            await _respond(send, 504, b"no barrier")
            return
        await asyncio.sleep(SLOW_POLL)
    await _respond(send, 200, b"slow done")


async def _stream(send: Send) -> None:
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for chunk in STREAM_CHUNKS:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _large(scope: Scope, send: Send) -> None:
    size = int(query(scope.get("query_string", b"").decode()).get("size", "0"))
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(size).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for block in pattern(size):
        await send({"type": "http.response.body", "body": block, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Route a request to one of the corpus's answers."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/hello":
        await _respond(send, 200, HELLO)
    elif path == "/echo":
        body = await _read_body(receive)
        await _json(send, echo_answer(body, _header(scope, b"content-type")))
    elif path.startswith("/environ"):
        await _json(send, environ_answer(scope))
    elif path == "/stream":
        await _stream(send)
    elif path == "/large":
        await _large(scope, send)
    elif path == "/raise":
        raise RuntimeError("raised on purpose by /raise")
    elif path == "/slow":
        await _slow(scope, send)
    elif path == "/getenv":
        name = query(scope.get("query_string", b"").decode()).get("name", "")
        await _json(send, {"name": name, "value": os.environ.get(name)})
    else:
        await _respond(send, 404, b"no such route")
