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
from typing import TYPE_CHECKING, ClassVar

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
        server = _make_server(_config(app, context.options), context)
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
        # Known shortcoming: this bound holds for uvicorn's h11 parser only.
        # When httptools is installed uvicorn prefers it, and the head is then
        # unbounded here; enforcing it would need a check in front of the
        # parser (a protocol subclass counting bytes until the blank line).
        h11_max_incomplete_event_size=options.limits.max_head_size,
    )


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
