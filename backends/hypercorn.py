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

WSGI apps run through ``hypercorn_wsgi.WsgiAdapter`` rather than
hypercorn's own wrapper, whose environ breaks PEP 3333 and the runner's
contract (an int SERVER_PORT, no REMOTE_PORT, nothing for a UNIX peer) and
which never starts a response whose body iterable is empty (a 500 for every
empty 204 or HEAD answer).

Each head is parsed strictly before h11 parses it (``http11_strict``): h11
takes two equal Content-Lengths, a Content-Length beside a
Transfer-Encoding, bare LF line ends and folded lines, where a proxy in
front may frame the request otherwise (request smuggling). hypercorn's
ProtocolWrapper (hypercorn/protocol/__init__.py) builds its H11Protocol
with no hook to replace it, so ``prepare`` rebinds the name it looks up to
a subclass whose h11 connection is the strict one: the one patch this
adapter makes to hypercorn, in the worker only.

The head limits are applied by that parse and checked again on the scope
before the app runs (``AsgiGuard`` for ASGI, the adapter for WSGI), which
also turn a response field with CR, LF or NUL into a 500; h11's
``max_incomplete_event_size`` bounds a head that never ends, answered 414
when its request line has no end, 431 otherwise (by the strict connection:
hypercorn sends h11's status hint, and h11 hints 431 for any).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from juggler.backends.base import (
    App,
    Backend,
    HeadLimits,
    Interface,
    ServeContext,
    ServeOptions,
    require,
)
from juggler.backends.http11 import HttpError, error_response
from juggler.backends.http11_limits import AsgiGuard, log_refusal
from juggler.backends.http11_strict import strict_h11_connection
from juggler.backends.hypercorn_wsgi import Receive, Scope, Send, WsgiAdapter
from juggler.backends.signals import StopRequest
from juggler.backends.timers import Timers
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
        _use_strict_h11(options.limits, options)

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
            _wrap(app, options.interface, sock, config, options.limits),
            config,
            sockets=Sockets(
                secure_sockets=[], insecure_sockets=[sock], quic_sockets=[]
            ),
            shutdown_trigger=shutdown_trigger,
        )
    except (LifespanFailureError, LifespanTimeoutError) as exc:
        raise AppLoadError(f"the app's lifespan failed: {exc}") from None


def _use_strict_h11(limits: HeadLimits, options: ServeOptions) -> None:
    """Make hypercorn parse HTTP/1.1 with the strict h11 connection, with a
    deadline for each head and a limit on a body's pauses.

    hypercorn's own bound on a head is the keep-alive timeout (75 s by
    default), and neither a body that stops half-way nor a client that
    reads nothing is ever timed out (its ``read_timeout`` would close idle
    keep-alive connections too). A head gets ``header_timeout`` from its
    first bytes (408), a body ``io_timeout`` for each pause, and so does
    each write of the response.
    """
    import h11
    import hypercorn.protocol
    from hypercorn.events import Closed, RawData
    from hypercorn.protocol.h11 import H11Protocol

    connection_class = strict_h11_connection(limits)

    class StrictH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.connection = connection_class(
                h11.SERVER, max_incomplete_event_size=limits.max_head_size
            )
            self.timers = Timers(asyncio.get_running_loop())
            self.send_now = self.send
            self.send = self._send_in_time

        async def _send_in_time(self, event: Any) -> None:
            """Send; a client that takes none of it for io_timeout is cut."""
            if not isinstance(event, RawData):
                await self.send_now(event)
                return
            self.timers.arm("write", options.io_timeout, self._write_stalled)
            try:
                await self.send_now(event)
            finally:
                self.timers.cancel("write")

        def _write_stalled(self) -> None:
            # The send is hypercorn's TCPServer.protocol_send, blocked in its
            # writer's drain(), which has no timeout: abort the transport.
            server = getattr(self.send_now, "__self__", None)
            writer = getattr(server, "writer", None)
            if writer is not None:
                log.info(
                    "closed: a client read none of its response pid=%d", os.getpid()
                )
                writer.transport.abort()

        async def handle(self, event: Any) -> None:
            await super().handle(event)
            state = self._their_state()
            if not isinstance(event, RawData) or state is not h11.IDLE:
                self.timers.cancel("head")
            elif not self.timers.armed("head"):
                self.timers.arm("head", options.header_timeout, self._later(408))
            self.timers.cancel("body")
            if state is h11.SEND_BODY:
                self.timers.arm("body", options.io_timeout, self._later(None))

        def _their_state(self) -> Any:
            connection = self.connection
            if isinstance(connection, h11.Connection):
                return connection.their_state
            return None  # a websocket

        def _later(self, status: int | None) -> Callable[[], None]:
            """A timer's callback: close (with ``status``) if still due."""

            def fire() -> None:
                # Kept, so the task is not collected before it runs.
                self.late = asyncio.get_running_loop().create_task(
                    self._too_late(status)
                )

            return fire

        async def _too_late(self, status: int | None) -> None:
            if status is None:
                if self._their_state() is not h11.SEND_BODY:
                    return
                log.info("closed: a request body stalled pid=%d", os.getpid())
            else:
                if self._their_state() is not h11.IDLE:
                    return
                if not self.connection.trailing_data[0]:
                    return  # idle: the keep-alive timeout's business
                log_refusal(HttpError(status, "head not complete in time"), self.client)
                await self.send(RawData(data=error_response(status)))
            await self.send(Closed())

    hypercorn.protocol.H11Protocol = StrictH11Protocol  # type: ignore[attr-defined]


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


def _wrap(
    app: App,
    interface: Interface,
    sock: socket.socket,
    config: Config,
    limits: HeadLimits,
) -> Any:
    """The app in the shape hypercorn calls, with the contract's scope."""
    from hypercorn.app_wrappers import ASGIWrapper

    unix_path = sock.getsockname() if sock.family == socket.AF_UNIX else None
    if interface == "wsgi":
        return WsgiAdapter(app, config.wsgi_max_body_size, unix_path, limits)
    limited: App = AsgiGuard(app, limits)
    if unix_path is not None:
        # hypercorn says server=None on a UNIX socket; the contract wants
        # (path, None). Only UNIX sockets pay for this wrapper.
        return AsgiOnUnix(limited, unix_path)
    return ASGIWrapper(limited)


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
