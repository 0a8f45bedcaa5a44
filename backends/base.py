"""The contract between the runner and an HTTP backend.

A backend is a small class that adapts one HTTP server (gevent's pywsgi,
uvicorn, ...) to a socket that is *already listening*: the runner, or the
supervisor before it, bound it. The runner calls, in this order:

1. ``prepare(options)`` before the application is imported. This is where a
   backend imports its server package (raising ``BackendUnavailable`` naming
   the extra to install when it is missing) and where gevent monkey-patches.
2. ``serve(sock, app, context)`` once. It serves until SIGTERM or SIGINT,
   then stops accepting, lets in-flight requests finish within
   ``options.graceful_timeout`` and returns. It calls ``context.ready()``
   once it accepts connections and ``context.draining()`` when the stop
   begins.

What every backend gives the app, whatever its server does by default:

- ``REMOTE_ADDR``/``REMOTE_PORT`` (WSGI) and ``scope["client"]`` (ASGI): the
  peer's IP and port on TCP. A UNIX-socket peer has no address: the environ
  gets ``REMOTE_ADDR = ""`` and no ``REMOTE_PORT``, the scope ``client = None``.
- ``SERVER_NAME``/``SERVER_PORT`` and ``scope["server"]``: the listening
  address on TCP; on a UNIX socket ``"localhost"`` and ``"80"`` in the
  environ, and ``scope["server"] = (path, None)`` as the ASGI spec allows.
- HTTP/1.1 keep-alive is on; no per-request log line is written (the runner
  wraps the app itself when ``--access-log`` is given).
- An exception from the app is a 500 (or a closed connection once the
  response has begun) and a logged traceback; the worker keeps serving.

A backend must never call ``shutdown()`` on the listening socket nor unlink a
UNIX socket path: sibling workers share the same socket, and a shutdown
would wake and break their ``accept()`` too. Closing its own descriptor is
fine.
"""

from __future__ import annotations

import abc
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

# The errors a backend may raise live with the runner's other errors.
from juggler.runner.errors import BackendUnavailable, BootError

__all__ = [
    "App",
    "Backend",
    "BackendUnavailable",
    "BootError",
    "HeadLimits",
    "Interface",
    "ServeContext",
    "ServeOptions",
    "require",
]

Interface = Literal["wsgi", "asgi"]
App = Callable[..., Any]


@dataclass(frozen=True)
class HeadLimits:
    """Bounds on a request head, enforced where the server allows it.

    The figures are Gunicorn's defaults, which proxies and clients have long
    lived with: a longer request line gets 414, more or longer header fields
    get 431 (or 400 where a server cannot tell them apart).
    """

    max_request_line: int = 4094
    max_header_count: int = 100
    max_header_size: int = 8190

    @property
    def max_head_size(self) -> int:
        """One bound on a whole head, for parsers (h11) that have no other.

        Room for the longest request line plus four of the longest header
        fields: the 4 x 8 KiB that nginx's large_client_header_buffers gives.
        """
        return self.max_request_line + 4 * self.max_header_size


@dataclass(frozen=True)
class ServeOptions:
    """Everything a backend needs to know besides the socket and the app."""

    interface: Interface = "wsgi"
    graceful_timeout: float = 30.0
    # Seconds an idle keep-alive connection is kept open. It must outlast the
    # idle timeout of a proxy in front (nginx's upstream keepalive_timeout is
    # 60 s by default) or the proxy may reuse a connection the backend is
    # closing and answer 502.
    keepalive_timeout: float = 75.0
    # Seconds a request head may take to arrive, from its first byte: a
    # client that trickles one (slowloris) is answered 408 and closed then,
    # however often it sends a byte.
    header_timeout: float = 30.0
    # Seconds a request body may pause, or a client not read its response,
    # before the connection is dropped: a limit on each wait without
    # progress, not on the whole transfer.
    io_timeout: float = 30.0
    # Greenlets (gevent family) or threads (threaded servers) per worker;
    # None lets the backend choose its own default.
    concurrency: int | None = None
    monkey_patch: bool = True
    limits: HeadLimits = field(default_factory=HeadLimits)


class ServeContext:
    """What a backend reports back while it serves."""

    def __init__(
        self,
        options: ServeOptions,
        on_ready: Callable[[], None] = lambda: None,
        on_draining: Callable[[], None] = lambda: None,
    ) -> None:
        self.options = options
        self._on_ready = on_ready
        self._on_draining = on_draining
        self._ready_sent = False
        self._draining_sent = False

    def ready(self) -> None:
        """Call once the backend accepts connections on the socket."""
        if not self._ready_sent:
            self._ready_sent = True
            self._on_ready()

    def draining(self) -> None:
        """Call when a stop begins: no new connections are accepted."""
        if not self._draining_sent:
            self._draining_sent = True
            self._on_draining()


class Backend(abc.ABC):
    """One HTTP server, adapted to serve an inherited listening socket."""

    #: The name users pass to ``runner serve --backend``.
    name: ClassVar[str]
    #: The application interfaces the server speaks.
    interfaces: ClassVar[frozenset[Interface]]
    #: The importable server package, checked by ``runner backends``.
    package: ClassVar[str | None] = None
    #: The ``juggler[...]`` extra that installs the server package.
    extra: ClassVar[str | None] = None
    #: Whether the server can serve a UNIX socket.
    supports_unix: ClassVar[bool] = True

    def prepare(self, options: ServeOptions) -> None:  # noqa: B027 (optional)
        """Import the server package; runs before the app is imported."""

    @abc.abstractmethod
    def serve(self, sock: socket.socket, app: App, context: ServeContext) -> None:
        """Serve ``app`` on ``sock`` until stopped, then drain and return."""


def require(module: str, backend: str, extra: str | None) -> Any:
    """Import ``module`` for ``backend`` or raise one clear line saying how."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        fix = f"pip install 'juggler[{extra}]'" if extra else f"pip install {module}"
        raise BackendUnavailable(
            f'backend "{backend}" needs the {module} package, which is not '
            f"installed ({exc}); install it with: {fix}"
        ) from exc
