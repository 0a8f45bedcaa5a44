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
  ``scheme`` from X-Forwarded-* sent by 127.0.0.1/::1 (or by whatever
  FORWARDED_ALLOW_IPS says), so the app would see different things on
  uvicorn than on every other backend. The trust list belongs to the runner
  and will be one option for all backends; this backend will then pass it
  as ``forwarded_allow_ips`` with ``proxy_headers=True``.
- h11, chosen explicitly, parses every request, and the head limits are
  checked before the app runs (``HeadLimited``, on the scope); h11 bounds a
  head that never ends (``max_incomplete_event_size``), and one past that
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
from juggler.backends.http11_limits import HeadLimited, HttpError
from juggler.backends.signals import StopRequest
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
        config.loaded_app = HeadLimited(config.loaded_app, context.options.limits)
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
        http=_h11_protocol(options.limits),
        h11_max_incomplete_event_size=options.limits.max_head_size,
    )


def _h11_protocol(limits: HeadLimits) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, answering a head past h11's bound as it should.

    uvicorn answers 400 to any error h11 raises. When the buffer is over
    h11's bound and holds no complete head, the head was too long: 414 if
    the request line has not even ended within its limit, 431 otherwise.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class LimitedH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            error = _overflow(self.conn, limits)
            if error is None:
                super().send_400_response(msg)
                return
            log.info("rejected: %s from %s pid=%d", error, self.client, os.getpid())
            reason = HTTPStatus(error.status).phrase
            headers = [(b"content-length", b"0"), (b"connection", b"close")]
            response = h11.Response(
                status_code=error.status, headers=headers, reason=reason
            )
            self.transport.write(self.conn.send(response))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
            self.transport.close()

    return LimitedH11Protocol


def _overflow(conn: Any, limits: HeadLimits) -> HttpError | None:
    """The refusal for a head past h11's bound, or None for another error.

    Only an error path pays for the copy of the buffer.
    """
    buffered, _ = conn.trailing_data
    if len(buffered) <= limits.max_head_size or b"\r\n\r\n" in buffered:
        return None
    line_end = buffered.lstrip(b"\r\n").find(b"\r\n")
    if line_end < 0 or line_end > limits.max_request_line:
        return HttpError(414, "request line too long (head past its bound)")
    return HttpError(431, "request head past its bound")


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
