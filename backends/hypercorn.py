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

The head limits are checked on the scope before the app runs (``HeadLimited``
for ASGI, the adapter for WSGI); h11's ``max_incomplete_event_size`` bounds
a head that never ends. Known shortcoming: hypercorn answers a head past
that bound with 431 even when it is the request line that has no end
(hypercorn/protocol/h11.py, ``_handle_events``, which sends h11's status
hint); 414 there would need a subclass of hypercorn's H11Protocol, which
its ProtocolWrapper (hypercorn/protocol/__init__.py) builds with no hook to
replace it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
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
from juggler.backends.http11_limits import HeadLimited
from juggler.backends.hypercorn_wsgi import Receive, Scope, Send, WsgiAdapter
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
            _wrap(app, options.interface, sock, config, options.limits),
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
    limited: App = HeadLimited(app, limits)
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
