"""hypercorn: ASGI and WSGI apps over HTTP/1.1 and HTTP/2 (h2c), on asyncio.

The inherited socket is handed to hypercorn's worker as it is. A
``fd://N`` bind would work too (hypercorn detects the family), but it wraps
the descriptor in a second socket object, marks it inheritable, so that
every process the app spawns would hold the listening socket, and leaves two
objects that each believe they own the descriptor.

When hypercorn awaits the shutdown trigger its servers are already
accepting, so the trigger is where readiness is reported; it returns on the
first SIGTERM or SIGINT, which starts the drain. hypercorn then closes the
listening servers (a close, never a shutdown), tells idle keep-alive
connections to close, waits up to ``graceful_timeout`` for requests in
flight and runs the lifespan shutdown.

Known shortcoming: from Python 3.12.1, ``asyncio.Server.wait_closed`` waits
for every connection to end, and hypercorn awaits it *before* its graceful
timeout starts, so a request that never ends keeps the worker draining until
the supervisor kills it. Bounding it here would need the open connections'
transports (``Server.abort_clients()`` from Python 3.13, or a patched
``worker_serve``). Python 3.11's ``wait_closed`` returns at once.

WSGI apps run through ``WsgiAdapter`` rather than hypercorn's own wrapper,
whose environ breaks PEP 3333 and the runner's contract (an int SERVER_PORT,
no REMOTE_PORT, nothing for a UNIX peer) and which never starts a response
whose body iterable is empty (a 500 for every empty 204 or HEAD answer).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote_to_bytes

from juggler.backends.base import (
    App,
    Backend,
    Interface,
    ServeContext,
    ServeOptions,
    require,
)
from juggler.backends.signals import StopRequest
from juggler.runner.errors import AppLoadError

if TYPE_CHECKING:
    from hypercorn.config import Config

log = logging.getLogger("juggler.backends.hypercorn")


class _NoBanner(logging.Filter):
    """Drops hypercorn's "Running on ..." line: the runner logs its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Running on ")


class HypercornBackend(Backend):
    """Serves ASGI and WSGI apps with hypercorn's asyncio worker."""

    name: ClassVar[str] = "hypercorn"
    interfaces: ClassVar[frozenset[Interface]] = frozenset({"asgi", "wsgi"})
    package: ClassVar[str | None] = "hypercorn"
    extra: ClassVar[str | None] = "hypercorn"

    def prepare(self, options: ServeOptions) -> None:
        require("hypercorn.asyncio", self.name, self.extra)

    def serve(self, sock: socket.socket, app: App, context: ServeContext) -> None:
        asyncio.run(_serve(sock, app, context))


async def _serve(sock: socket.socket, app: App, context: ServeContext) -> None:
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.config import Sockets
    from hypercorn.utils import LifespanFailureError, LifespanTimeoutError

    options = context.options
    config = _config(options)
    loop = asyncio.get_running_loop()
    if options.interface == "wsgi" and options.concurrency is not None:
        # WSGI calls run in the loop's default executor: size it.
        loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(options.concurrency)
        )

    stop_event = asyncio.Event()
    # Never closed: its handlers stay installed after serving (during the
    # post-hook, say) and must still find their pipe open.
    stop = StopRequest()
    stop.install()
    stop.call_on_loop(loop, stop_event.set)

    async def shutdown_trigger() -> None:
        context.ready()
        await stop_event.wait()
        context.draining()

    try:
        await worker_serve(
            _wrap(app, options.interface, sock, config),
            config,
            sockets=Sockets(
                secure_sockets=[], insecure_sockets=[sock], quic_sockets=[]
            ),
            shutdown_trigger=shutdown_trigger,
        )
    except (LifespanFailureError, LifespanTimeoutError) as exc:
        raise AppLoadError(f"the app's lifespan failed: {exc}") from None


def _config(options: ServeOptions) -> Config:
    from hypercorn.config import Config

    config = Config()
    config.accesslog = None
    errorlog = logging.getLogger("hypercorn.error")
    errorlog.addFilter(_NoBanner())
    config.errorlog = errorlog
    config.graceful_timeout = options.graceful_timeout
    config.keep_alive_timeout = options.keepalive_timeout
    config.h11_max_incomplete_size = options.limits.max_head_size
    if options.interface == "asgi" and options.concurrency is not None:
        log.warning(
            "--spawn/--threads has no effect on ASGI apps under hypercorn pid=%d",
            os.getpid(),
        )
    return config


def _wrap(app: App, interface: Interface, sock: socket.socket, config: Config) -> Any:
    """The app in the shape hypercorn calls, with the contract's scope."""
    from hypercorn.app_wrappers import ASGIWrapper

    unix_path = sock.getsockname() if sock.family == socket.AF_UNIX else None
    if interface == "wsgi":
        return WsgiAdapter(app, config.wsgi_max_body_size, unix_path)
    if unix_path is not None:
        # hypercorn says server=None on a UNIX socket; the contract wants
        # (path, None). Only UNIX sockets pay for this wrapper.
        return AsgiOnUnix(app, unix_path)
    return ASGIWrapper(app)


Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType]


class AsgiOnUnix:
    """An ASGI app under hypercorn on a UNIX socket: ``server = (path, None)``."""

    def __init__(self, app: App, path: str) -> None:
        self.app = app
        self.server = (path, None)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, *_: object
    ) -> None:
        if scope["type"] != "lifespan":
            scope["server"] = self.server
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class WsgiAdapter:
    """A WSGI app in hypercorn's worker threads, with the contract's environ.

    hypercorn calls it as ``(scope, receive, send, sync_spawn, call_soon)``:
    ``sync_spawn`` runs a function in the loop's default executor and
    ``call_soon`` runs a coroutine on the loop from that thread, waiting for
    its result.

    Known shortcoming: the request body is read whole, up to
    ``max_body_size`` (413 beyond), before the app runs. Streaming it would
    take a ``wsgi.input`` whose reads fetch the next message through
    ``call_soon(receive)``, with its own buffering for ``readline``.
    """

    def __init__(self, app: App, max_body_size: int, unix_path: str | None) -> None:
        self.app = app
        self.max_body_size = max_body_size
        self.unix = unix_path is not None

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send, sync_spawn, call_soon)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close"})
        # A lifespan scope returns at once: hypercorn then runs without one.

    async def _http(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        try:
            body = await _read_body(receive, self.max_body_size)
        except _BodyTooLarge:
            await _refuse(send, 413)
            return
        if body is None:
            return  # the client left before its body was complete
        environ = self.environ(scope, body)
        response = _Response(lambda message: call_soon(send, message))
        await sync_spawn(self._run, environ, response)

    def _run(self, environ: dict[str, Any], response: _Response) -> None:
        """Call the app and send what it yields; runs in a worker thread."""
        result: Iterable[bytes] = self.app(environ, response.start_response)
        try:
            for chunk in result:
                response.write(chunk)
            response.finish()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def environ(self, scope: Scope, body: bytes) -> dict[str, Any]:
        """PEP 3333's environ for one request, from hypercorn's scope."""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope["method"],
            "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin-1"),
            # From the raw path, so that %2F and non-UTF-8 escapes survive
            # as PEP 3333 wants them: the decoded bytes read as latin-1.
            "PATH_INFO": unquote_to_bytes(scope["raw_path"]).decode("latin-1"),
            "QUERY_STRING": scope["query_string"].decode("latin-1"),
            "SERVER_PROTOCOL": "HTTP/" + scope["http_version"],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope["scheme"],
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        environ.update(self._addresses(scope))
        environ.update(_header_fields(scope["headers"]))
        return environ

    def _addresses(self, scope: Scope) -> dict[str, str]:
        if self.unix:
            return {"SERVER_NAME": "localhost", "SERVER_PORT": "80", "REMOTE_ADDR": ""}
        server, client = scope["server"], scope["client"]
        return {
            "SERVER_NAME": server[0],
            "SERVER_PORT": str(server[1]),
            "REMOTE_ADDR": client[0],
            "REMOTE_PORT": str(client[1]),
        }


def _header_fields(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """CONTENT_TYPE, CONTENT_LENGTH and HTTP_* from the request's headers.

    A name with an underscore is dropped: ``X_Forwarded_For`` would land on
    the same key as ``X-Forwarded-For`` and could pass for a header the
    proxy in front vouches for. Repeated fields join with a comma (cookies
    with a semicolon, as RFC 6265 asks).
    """
    fields: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        if "_" in name or name.startswith(":"):
            continue
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = raw_value.decode("latin-1")
        if key in fields:
            joiner = "; " if key == "HTTP_COOKIE" else ","
            value = fields[key] + joiner + value
        fields[key] = value
    return fields


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when the client goes away first."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            raise _BodyTooLarge
        if not message.get("more_body", False):
            return bytes(body)


async def _refuse(send: Send, status: int) -> None:
    headers = [(b"content-length", b"0"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Response:
    """start_response and the body of one WSGI response, sent as ASGI events.

    The head goes out with the first non-empty chunk, or when the app's
    iterable ends, so an app may still change its status (start_response
    with exc_info) until then, as PEP 3333 allows.
    """

    def __init__(self, send: Callable[[Message], object]) -> None:
        self._send = send
        self._status: int | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._started = False

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self._started:
            raise exc_info[1].with_traceback(exc_info[2])
        if exc_info is None and self._status is not None:
            raise RuntimeError("start_response called twice without exc_info")
        self._status = int(status.split(" ", 1)[0])
        self._headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers
        ]
        return self.write

    def write(self, data: bytes) -> None:
        if data:
            self._start()
            self._send({"type": "http.response.body", "body": data, "more_body": True})

    def finish(self) -> None:
        self._start()
        self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def _start(self) -> None:
        if self._started:
            return
        if self._status is None:
            raise RuntimeError("the WSGI app returned without calling start_response")
        self._started = True
        self._send(
            {
                "type": "http.response.start",
                "status": self._status,
                "headers": self._headers,
            }
        )
