"""uvicorn: the default backend for ASGI apps.

uvicorn serves the inherited socket through ``Server.serve(sockets=[sock])``.
``Config(fd=...)`` is not used: uvicorn wraps such a descriptor as AF_UNIX
whatever it really is, which would mislabel a TCP socket's addresses.

What the adapter changes in uvicorn's behaviour, and why:

- Signals are the runner's (``StopRequest``): uvicorn's own handlers would
  re-raise the stop signal after a graceful shutdown, which kills the process
  with SIGTERM instead of letting it exit 0, and they ignore SIGQUIT.
- ``access_log`` off and ``log_config`` None: the runner writes access lines
  itself when asked, and uvicorn's loggers propagate to the runner's handler.
- ``proxy_headers`` off. uvicorn would otherwise rewrite ``client`` and
  ``scheme`` from X-Forwarded-* sent by 127.0.0.1 (or by whatever
  FORWARDED_ALLOW_IPS says), apart from the runner's own
  ``--forwarded-allow-ips``, which does the same for every backend.
- h11, chosen explicitly, parses every request, after a strict parse of
  its head (``http11_strict``), which refuses what h11 lets through and a
  proxy may frame otherwise (request smuggling) and applies the head
  limits; they are checked again on the scope (``AsgiGuard``, which also
  turns a response field with CR, LF or NUL into a 500). h11 bounds
  a head that never ends (``max_incomplete_event_size``), and one past that
  bound gets 414 or 431 where uvicorn would say 400. httptools, which
  uvicorn prefers when installed, buffers the URL and the fields of an
  endless head without any bound.
- The ``server`` and ``date`` headers stay. They cost nothing measurable,
  say which backend answered when one talks to a worker's socket directly,
  and nginx drops both from proxied answers by default (proxy_hide_header).

On a UNIX socket uvicorn already gives ``client = None`` and
``server = (path, None)``, the contract's shape, so requests pass unwrapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterator
from http import HTTPStatus
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
from juggler.backends.signals import StopRequest
from juggler.backends.timers import Timers
from juggler.runner.errors import AppLoadError

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("juggler.backends.uvicorn")

# The exit status uvicorn gives when the app's lifespan startup fails.
_STARTUP_FAILURE = 3


def whole_seconds(seconds: float) -> int:
    """uvicorn declares its timeouts in whole seconds; round up, never cut."""
    return math.ceil(seconds)


class UvicornBackend(Backend):
    """Serves ASGI apps (3.0 and 2.0) with uvicorn."""

    name: ClassVar[str] = "uvicorn"
    interfaces: ClassVar[frozenset[Interface]] = frozenset({"asgi"})
    package: ClassVar[str | None] = "uvicorn"
    extra: ClassVar[str | None] = "uvicorn"

    def prepare(self, options: ServeOptions) -> None:
        require("uvicorn", self.name, self.extra)

    def serve(self, sock: socket.socket, app: App, context: ServeContext) -> None:
        config = _config(app, context.options)
        # Loaded here rather than by uvicorn, so that the app it built (with
        # its ASGI 2 adapter where needed) can be put behind the limits.
        config.load()
        config.loaded_app = AsgiGuard(config.loaded_app, context.options.limits)
        server = _make_server(config, context)
        try:
            server.run(sockets=[sock])
        except SystemExit as exc:
            # uvicorn exits this way only when the lifespan startup failed.
            if exc.code != _STARTUP_FAILURE:
                raise
            raise AppLoadError(
                "the app's lifespan startup failed (its error is logged above)"
            ) from None


def _config(app: App, options: ServeOptions) -> uvicorn.Config:
    import uvicorn

    limit = _connection_limit(options.concurrency)
    return uvicorn.Config(
        # The app is already loaded. Handing uvicorn a factory stops it from
        # probing the app by calling it with no arguments.
        lambda: app,
        factory=True,
        lifespan="auto",
        access_log=False,
        log_config=None,
        proxy_headers=False,
        timeout_keep_alive=whole_seconds(options.keepalive_timeout),
        timeout_graceful_shutdown=whole_seconds(options.graceful_timeout),
        limit_concurrency=limit,
        http=_h11_protocol(options.limits, options),
        h11_max_incomplete_event_size=options.limits.max_head_size,
    )


def _h11_protocol(limits: HeadLimits, timeouts: ServeOptions) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, with a strict head and the right refusals.

    Before h11 parses a head, ``http11_strict`` checks it: h11 takes two
    equal Content-Lengths, a Content-Length beside a Transfer-Encoding, bare
    LF line ends and folded lines, where a proxy in front may frame the
    request otherwise (request smuggling). A refused head is answered and
    the connection closed, so nothing behind it is read.

    uvicorn answers 400 to any error h11 raises; a refusal by the strict
    connection (which also tells 414 from 431 for a head past h11's bound)
    is answered with its own status.

    uvicorn has no timeout but the keep-alive one, which stops when bytes
    come. Here a head not complete ``header_timeout`` after its first bytes
    is answered 408, and a body that pauses, or a client that reads nothing
    of its response, for ``io_timeout`` has its connection closed.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    connection_class = strict_h11_connection(limits)

    class LimitedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.conn = connection_class(h11.SERVER, limits.max_head_size)
            self.timers = Timers(self.loop)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # uvicorn stops its keep-alive timer when bytes come and has no
            # other: a head trickled a byte at a time, or a body that stops
            # half-way, would hold the connection for ever.
            state = self.conn.their_state
            if state is not h11.IDLE or self.transport.is_closing():
                self.timers.cancel("head")
            elif not self.timers.armed("head"):
                self.timers.arm("head", timeouts.header_timeout, self._head_late)
            self.timers.cancel("body")
            if state is h11.SEND_BODY and not self.transport.is_closing():
                self.timers.arm("body", timeouts.io_timeout, self._body_stalled)

        def pause_writing(self) -> None:
            super().pause_writing()
            if not self.timers.armed("write"):
                self.timers.arm("write", timeouts.io_timeout, self._write_stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            self.timers.cancel("write")

        def connection_lost(self, exc: Exception | None) -> None:
            self.timers.cancel_all()
            super().connection_lost(exc)

        def _head_late(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log_refusal(HttpError(408, "head not complete in time"), self.client)
                self.transport.write(error_response(408))
                self.transport.close()

        def _body_stalled(self) -> None:
            if self.conn.their_state is not h11.SEND_BODY:
                return
            if self.flow.read_paused:  # the app is the slow one
                self.timers.arm("body", timeouts.io_timeout, self._body_stalled)
                return
            log.info("closed: a request body stalled pid=%d", os.getpid())
            self.transport.close()

        def _write_stalled(self) -> None:
            log.info("closed: a client read none of its response pid=%d", os.getpid())
            self.transport.abort()

        def send_400_response(self, msg: str) -> None:
            error = getattr(self.conn, "refusal", None)
            if error is None:
                super().send_400_response(msg)
                return
            log_refusal(error, self.client)
            reason = HTTPStatus(error.status).phrase
            headers = [(b"content-length", b"0"), (b"connection", b"close")]
            response = h11.Response(
                status_code=error.status, headers=headers, reason=reason
            )
            self.transport.write(self.conn.send(response))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
            self.transport.close()

    return LimitedH11Protocol


def _connection_limit(concurrency: int | None) -> int | None:
    """uvicorn's limit_concurrency for ``--spawn N``: N requests, not N - 1.

    uvicorn answers 503 once the open connections (idle keep-alive ones
    included), counting the one asking, reach the limit; so N is served
    only with a limit of N + 1.
    """
    if concurrency is None:
        return None
    log.info(
        "uvicorn answers 503 beyond %d open connections pid=%d",
        concurrency,
        os.getpid(),
    )
    return concurrency + 1


def _make_server(config: uvicorn.Config, context: ServeContext) -> uvicorn.Server:
    """A uvicorn Server that reports readiness and takes the runner's signals.

    The class is built here because uvicorn may only be imported once
    ``prepare`` has checked that it is installed.
    """
    import uvicorn

    class RunnerServer(uvicorn.Server):
        """uvicorn's Server, hooked where the runner must hear of it."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # Never closed: its handlers stay installed after serving (during
            # the post-hook, say) and must still find their pipe open.
            stop = StopRequest()
            stop.install()
            stop.call_on_loop(asyncio.get_running_loop(), self.request_exit)
            yield

        def request_exit(self) -> None:
            # uvicorn's main loop looks at this flag every 0.1 s.
            self.should_exit = True

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                context.ready()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            context.draining()
            # uvicorn closes the asyncio servers (which close our descriptor
            # without a shutdown(), so sibling workers keep accepting), waits
            # for in-flight requests up to the graceful timeout, then runs the
            # lifespan shutdown.
            await super().shutdown(sockets=sockets)

    return RunnerServer(config)
