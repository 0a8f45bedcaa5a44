"""The WSGI app the conformance corpus talks to.

conformance_asgi.py answers every route the same way, byte for byte where
the route's answer is JSON, so one corpus checks both kinds of backend:

- ``/hello``            13 bytes with a Content-Length;
- ``/echo``             JSON: the body's length, SHA-256, Content-Type and,
                        when it is at most ``ECHO_LIMIT`` bytes, the body;
- ``/environ...``       JSON: the CGI-style fields of the request (any path
                        under /environ, so percent-encoded paths can be seen);
- ``/stream``           ``STREAM_CHUNKS`` without a Content-Length;
- ``/large?size=N``     N bytes of ``pattern(N)``;
- ``/raise``            raises before answering;
- ``/slow?barrier=P``   touches ``P.started``, waits for the file P, answers;
- ``/getenv?name=K``    JSON: ``os.environ.get(K)`` as the app sees it.

It also holds the runner tests' hooks and a PasteDeploy factory.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

ECHO_LIMIT = 64 * 1024
STREAM_CHUNKS = tuple(f"chunk {i}\n".encode() for i in range(5))
HELLO = b"Hello, world!"
# The app polls the barrier file; the test never sleeps (see /slow).
SLOW_POLL = 0.01
SLOW_GIVE_UP = 60.0
_BLOCK = bytes(range(256)) * 256

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def pattern(size: int) -> Iterator[bytes]:
    """The body of /large?size=N, in blocks of 64 KiB."""
    while size > 0:
        block = _BLOCK[:size]
        size -= len(block)
        yield block


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for block in pattern(size):
        digest.update(block)
    return digest.hexdigest()


def echo_answer(body: bytes, content_type: str | None) -> dict[str, Any]:
    return {
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "content_type": content_type,
        "body": body.decode("latin-1") if len(body) <= ECHO_LIMIT else None,
    }


def wait_for_barrier(path: str) -> bool:
    """Mark the request as in flight, then wait for the test's go."""
    with open(path + ".started", "w"):
        pass
    deadline = time.monotonic() + SLOW_GIVE_UP
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(SLOW_POLL)
    return True


def query(text: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(text).items()}


# -- the app -----------------------------------------------------------------


def _respond(
    start_response: StartResponse,
    status: str,
    body: bytes,
    content_type: str = "text/plain",
) -> list[bytes]:
    start_response(
        status,
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]


def _json(start_response: StartResponse, answer: object) -> list[bytes]:
    body = json.dumps(answer, sort_keys=True).encode()
    return _respond(start_response, "200 OK", body, "application/json")


def _read_body(environ: Environ) -> bytes | None:
    """The request body, or None when the server gives no way to find its end."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        return _read_exactly(stream, int(length))
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if not chunked:
        return b""
    # PEP 3333 lets an app read past CONTENT_LENGTH only when the server says
    # the stream ends where the body does; reading otherwise would block.
    if not environ.get("wsgi.input_terminated"):
        return None
    return b"".join(iter(lambda: stream.read(65536), b""))


def _read_exactly(stream: Any, length: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        part = stream.read(min(length, 65536))
        if not part:
            break
        parts.append(part)
        length -= len(part)
    return b"".join(parts)


def environ_answer(environ: Environ) -> dict[str, Any]:
    keys = (
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "RAW_URI",
        "SERVER_NAME",
        "SERVER_PORT",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "SERVER_PROTOCOL",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "wsgi.url_scheme",
    )
    answer = {key: environ[key] for key in keys if key in environ}
    answer["headers"] = {
        key: value for key, value in environ.items() if key.startswith("HTTP_")
    }
    return answer


def _slow(environ: Environ, start_response: StartResponse) -> list[bytes]:
    barrier = query(environ.get("QUERY_STRING", "")).get("barrier", "")
    if not barrier:
        return _respond(start_response, "400 Bad Request", b"barrier=PATH missing")
    if not wait_for_barrier(barrier):
        return _respond(start_response, "504 Gateway Timeout", b"no barrier")
    return _respond(start_response, "200 OK", b"slow done")


def _stream(start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield from STREAM_CHUNKS


def _large(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    size = int(query(environ.get("QUERY_STRING", "")).get("size", "0"))
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
    )
    return pattern(size)


def _echo(environ: Environ, start_response: StartResponse) -> list[bytes]:
    body = _read_body(environ)
    if body is None:
        message = b"chunked body but the server did not set wsgi.input_terminated"
        return _respond(start_response, "411 Length Required", message)
    return _json(start_response, echo_answer(body, environ.get("CONTENT_TYPE")))


def _hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    return _respond(start_response, "200 OK", HELLO)


def _raise(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    raise RuntimeError("raised on purpose by /raise")


def _getenv(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    name = query(environ.get("QUERY_STRING", "")).get("name", "")
    return _json(start_response, {"name": name, "value": os.environ.get(name)})


ROUTES: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "/hello": _hello,
    "/echo": _echo,
    "/stream": lambda environ, start_response: _stream(start_response),
    "/large": _large,
    "/raise": _raise,
    "/slow": _slow,
    "/getenv": _getenv,
}


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Route a request to one of the corpus's answers."""
    path = environ.get("PATH_INFO", "")
    if path.startswith("/environ"):
        return _json(start_response, environ_answer(environ))
    route = ROUTES.get(path)
    if route is None:
        return _respond(start_response, "404 Not Found", b"no such route")
    return route(environ, start_response)


application = app


# -- for the runner's tests --------------------------------------------------


def _mark(name: str) -> None:
    """Write a marker file into $CONFORMANCE_MARKERS (set by the test)."""
    directory = os.environ["CONFORMANCE_MARKERS"]
    with open(os.path.join(directory, name), "w") as marker:
        marker.write(str(os.getpid()))


def pre_hook(settings: object) -> None:
    _mark("pre_hook")


def post_hook(settings: object) -> None:
    _mark("post_hook")


def paste_app_factory(global_conf: dict[str, str], **local_conf: str) -> Any:
    """A PasteDeploy ``app_factory``: answers ``<greeting>, paste!``."""
    body = f"{local_conf.get('greeting', 'Hello')}, paste!".encode()

    def paste_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        return _respond(start_response, "200 OK", body)

    return paste_app
