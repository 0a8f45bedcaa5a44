"""Apps the uvicorn and hypercorn backend tests talk to.

``app`` is ASGI, ``wsgi_app`` its WSGI counterpart (for hypercorn, which
serves both). Routes:

- ``/hello``              13 bytes with a Content-Length;
- ``/echo``               the request body, as it came;
- ``/stream``             ``CHUNKS``, one body message (or item) each;
- ``/scope`` ``/environ`` JSON: what the app was given about the request;
- ``/raise``              raises before answering;
- ``/slow?barrier=P``     touches ``P.started``, waits for the file P, answers;
- ``/empty``              204 with an empty body (WSGI: an empty iterable).

With ``ASGI_PROBE_MARKERS=DIR`` in the environment the lifespan writes
``DIR/startup`` and ``DIR/shutdown`` when each phase runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

HELLO = b"Hello, world!"
CHUNKS = tuple(f"chunk {i}\n".encode() for i in range(4))
POLL = 0.01
GIVE_UP = 60.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _mark(phase: str) -> None:
    directory = os.environ.get("ASGI_PROBE_MARKERS")
    if directory:
        with open(os.path.join(directory, phase), "w") as f:
            f.write(str(os.getpid()))


def _barrier(query_string: str) -> str:
    return parse_qs(query_string)["barrier"][0]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _mark("startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            _mark("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _scope_answer(scope: Scope) -> bytes:
    fields = {
        "client": scope.get("client"),
        "server": scope.get("server"),
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "scheme": scope["scheme"],
        "http_version": scope["http_version"],
        "method": scope["method"],
        "headers": [
            [k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]
        ],
    }
    return json.dumps(fields).encode()


async def _slow(scope: Scope, send: Send) -> None:
    barrier = _barrier(scope["query_string"].decode())
    with open(barrier + ".started", "w"):
        pass
    deadline = time.monotonic() + GIVE_UP
    while not os.path.exists(barrier) and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
    await _answer(send, 200, b"slow done")


async def _stream(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for chunk in CHUNKS:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI probe."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/hello":
        await _answer(send, 200, HELLO)
    elif path == "/echo":
        await _answer(send, 200, await _body(receive))
    elif path == "/stream":
        await _stream(send)
    elif path.startswith("/scope"):
        await _answer(send, 200, _scope_answer(scope))
    elif path == "/raise":
        raise RuntimeError("raised on purpose by /raise")
    elif path == "/slow":
        await _slow(scope, send)
    elif path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:
        await _answer(send, 404, b"no such route")


async def no_lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that refuses the lifespan protocol, as many older ones do."""
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope {scope['type']}")
    await _answer(send, 200, HELLO)


async def failing_startup_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app whose lifespan startup reports a failure."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "db is down"})
        return
    await _answer(send, 200, HELLO)


# -- WSGI ------------------------------------------------------------------

StartResponse = Callable[..., Any]
ENVIRON_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "HTTP_X_PROBE",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_COOKIE",
    "wsgi.url_scheme",
)


def _wsgi_answer(
    start_response: StartResponse, status: str, body: bytes
) -> list[bytes]:
    start_response(status, [("Content-Length", str(len(body)))])
    return [body]


def _wsgi_slow(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    barrier = _barrier(environ["QUERY_STRING"])
    with open(barrier + ".started", "w"):
        pass
    deadline = time.monotonic() + GIVE_UP
    while not os.path.exists(barrier) and time.monotonic() < deadline:
        time.sleep(POLL)
    return _wsgi_answer(start_response, "200 OK", b"slow done")


def _wsgi_stream(start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield from CHUNKS


def _wsgi_echo(environ: dict[str, Any], start_response: StartResponse) -> Any:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return _wsgi_answer(start_response, "200 OK", environ["wsgi.input"].read(length))


def _wsgi_environ(environ: dict[str, Any], start_response: StartResponse) -> Any:
    answer = {key: environ.get(key) for key in ENVIRON_KEYS}
    cgi_values = [value for key, value in environ.items() if key.isupper()]
    answer["types"] = sorted({type(value).__name__ for value in cgi_values})
    return _wsgi_answer(start_response, "200 OK", json.dumps(answer).encode())


def _wsgi_raise(environ: dict[str, Any], start_response: StartResponse) -> Any:
    raise RuntimeError("raised on purpose by /raise")


def _wsgi_empty(environ: dict[str, Any], start_response: StartResponse) -> Any:
    start_response("204 No Content", [])
    return []


WSGI_ROUTES: dict[str, Callable[[dict[str, Any], StartResponse], Any]] = {
    "/hello": lambda environ, start: _wsgi_answer(start, "200 OK", HELLO),
    "/echo": _wsgi_echo,
    "/stream": lambda environ, start: _wsgi_stream(start),
    "/raise": _wsgi_raise,
    "/slow": _wsgi_slow,
    "/empty": _wsgi_empty,
}


def wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Any:
    """The WSGI probe."""
    path = environ["PATH_INFO"]
    if path.startswith("/environ"):
        return _wsgi_environ(environ, start_response)
    route = WSGI_ROUTES.get(path)
    if route is None:
        return _wsgi_answer(start_response, "404 Not Found", b"no such route")
    return route(environ, start_response)
