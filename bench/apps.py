"""The apps every configuration serves, one route per workload.

``/`` answers 13 bytes, ``/64k`` 64 KiB, ``/post`` reads the request body
and answers 13 bytes, ``/wait`` waits 10 ms first (I/O bound). Every answer
carries ``X-Pid`` so that the restart measure can tell which worker served.

``wsgi`` waits with ``time.sleep`` (threaded servers, and meinheld, which
has no cooperative sleep: a meinheld worker serves one waiting request at a
time under every supervisor alike), ``wsgi_gevent`` with ``gevent.sleep``
and ``asgi`` with ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

HELLO = b"Hello, world!"
BIG = b"x" * 65536
WAIT_SECONDS = 0.010

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _headers(body: bytes) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("X-Pid", str(os.getpid())),
    ]


def _read_body(environ: Environ) -> int:
    """Drain the request body; its size, so nothing is optimised away."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    seen = 0
    while seen < length:
        chunk = stream.read(min(65536, length - seen))
        if not chunk:
            break
        seen += len(chunk)
    return seen


def _make_wsgi(sleep: Callable[[float], object]) -> Callable[..., Iterable[bytes]]:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        body = HELLO
        if path == "/64k":
            body = BIG
        elif path == "/post":
            _read_body(environ)
        elif path == "/wait":
            sleep(WAIT_SECONDS)
        start_response("200 OK", _headers(body))
        return [body]

    return app


def _gevent_sleep(seconds: float) -> None:
    import gevent

    gevent.sleep(seconds)


wsgi = _make_wsgi(time.sleep)
wsgi_gevent = _make_wsgi(_gevent_sleep)


async def _drain(receive: Receive) -> None:
    more = True
    while more:
        message = await receive()
        more = bool(message.get("more_body", False))


async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """The same four routes for ASGI servers (lifespan is acknowledged)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope.get("path", "/")
    body = HELLO
    if path == "/64k":
        body = BIG
    elif path == "/post":
        await _drain(receive)
    elif path == "/wait":
        await asyncio.sleep(WAIT_SECONDS)
    headers = [(k.lower().encode(), v.encode()) for k, v in _headers(body)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        kind = message["type"].rsplit(".", 1)[-1]
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return
