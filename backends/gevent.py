"""The gevent backend: gevent.pywsgi, one greenlet per connection.

Theory of operation. ``prepare`` monkey-patches the stdlib before the app is
imported, so that the app's own sockets, locks and sleeps yield to the hub
instead of blocking the worker. ``serve`` wraps the inherited socket in a
``WSGIServer`` whose connections run in a bounded ``gevent.pool.Pool``; the
main greenlet then waits on an event that the stop signals set. gevent
delivers those signals through its own loop (``gevent.signal_handler``), so
the hub wakes at once and the handlers run as ordinary greenlets; they only
record the signal, the main greenlet acts.

On a stop, in one step with no yield in between: no more accepting, the idle
keep-alive connections are closed, and any response still to be written
carries ``Connection: close``. Then the pool gets ``graceful_timeout`` to
empty; what is left is killed.

pywsgi is adapted through a handler subclass (``gevent_pywsgi``) rather
than a per-request wrapper: the environ conventions, the keep-alive
timeout, the head limits and a strict parse of the head all sit on the
path pywsgi takes anyway. The head is read and checked by ``http11_strict``
(pywsgi alone takes two Content-Lengths, a Content-Length beside a
Transfer-Encoding, or bare LF line ends, and lets request smuggling
through), and pywsgi then parses the fields as that check read them. A
``--keepalive-timeout`` of 0 or less turns keep-alive off. A head must
arrive within ``--header-timeout`` of its first byte (a ``gevent.Timeout``);
past it, each read of the body and write of the response has
``--io-timeout`` to make progress.

Known shortcomings:

- Three of the overrides are private to pywsgi (``_handle_client_error``,
  ``_log_error``, ``_write``); a gevent release may rename them. The tests
  catch that; the fix is to follow the rename.
- A request that reaches an idle keep-alive connection just as the drain
  closes it is lost; proxies retry such requests when they are idempotent.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

from juggler.backends.base import (
    App,
    Backend,
    ServeContext,
    ServeOptions,
    require,
)
from juggler.backends.gevent_pywsgi import server_class_for_gevent
from juggler.backends.signals import STOP_SIGNALS, exit_now

log = logging.getLogger("juggler.backends.gevent")

# Connections one worker serves at once when --spawn is not given. gevent's
# default (a greenlet per accepted connection, unbounded) lets the worker that
# wins the accept race take every connection of a burst while its siblings
# idle, and grow without limit under load. With a bound, a full worker stops
# accepting and the kernel hands the backlog to its siblings. 1000 is
# gunicorn's worker_connections default, which proxies have long lived with.
DEFAULT_CONCURRENCY = 1000
# How long killed greenlets get to unwind after the graceful timeout.
KILL_TIMEOUT = 1.0


class GeventBackend(Backend):
    """Serves WSGI apps with gevent.pywsgi on the inherited socket."""

    name = "gevent"
    interfaces = frozenset({"wsgi"})
    package = "gevent"
    extra = "gevent"

    def prepare(self, options: ServeOptions) -> None:
        """Import gevent and, unless --no-monkey, patch the stdlib."""
        require("gevent", self.name, self.extra)
        if options.monkey_patch:
            _patch_stdlib()
        else:
            log.info("not monkey-patching (--no-monkey): pid=%d", os.getpid())

    def serve(self, sock: socket.socket, app: App, context: ServeContext) -> None:
        """Serve until SIGTERM/SIGINT, then drain within graceful_timeout."""
        options = context.options
        server = _make_server(sock, app, options)
        stop = _StopSignals()
        try:
            server.start()
            context.ready()
            signum = stop.wait()
            log.info(
                "stop requested: signal=%s pid=%d",
                signal.Signals(signum).name,
                os.getpid(),
            )
            context.draining()
            _drain(server, options.graceful_timeout)
        finally:
            stop.cancel()


def _patch_stdlib() -> None:
    """Make the stdlib cooperative before the app is imported.

    gevent warns (MonkeyPatchWarning) when ``ssl`` was imported before the
    patch, because classes taken from it earlier keep blocking. Nothing the
    runner imports up to this point pulls in ``ssl`` (tests check the log for
    the warning). ``threading`` is already imported by ``logging``; gevent
    handles that case itself and does not warn.
    """
    from gevent import monkey

    monkey.patch_all()
    log.debug("monkey-patched the stdlib: pid=%d", os.getpid())


class _StopSignals:
    """SIGTERM/SIGINT/SIGQUIT through gevent's loop, recorded for the waiter."""

    def __init__(self) -> None:
        import gevent
        from gevent.event import Event

        self.signum: int | None = None
        self._event = Event()
        self._watchers = [
            gevent.signal_handler(signum, self._on_stop, signum)
            for signum in STOP_SIGNALS
        ]
        self._watchers.append(
            gevent.signal_handler(signal.SIGQUIT, exit_now, signal.SIGQUIT)
        )

    def _on_stop(self, signum: int) -> None:
        # A second SIGINT means the operator will not wait for the drain.
        if self.signum is not None and signum == signal.SIGINT:
            exit_now(signum)
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def wait(self) -> int:
        """Block the calling greenlet until a stop signal arrives."""
        self._event.wait()
        assert self.signum is not None
        return self.signum

    def cancel(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()


def _make_server(sock: socket.socket, app: App, options: ServeOptions) -> Any:
    from gevent.pool import Pool

    # The accept watcher only says "readable"; a sibling worker may take the
    # connection first, and a blocking accept() would then freeze the whole
    # hub. The flag lives on the open file description that the siblings
    # share, which every event-loop backend needs and threaded ones tolerate.
    sock.setblocking(False)
    server_class = server_class_for_gevent()
    return server_class(
        sock,
        app,
        options,
        spawn=Pool(options.concurrency or DEFAULT_CONCURRENCY),
        log=None,
        error_log=log,
        environ=_server_environ(sock),
    )


def _server_environ(sock: socket.socket) -> dict[str, str]:
    """SERVER_NAME/SERVER_PORT from the listening address, looked up once.

    Given here, they also spare pywsgi its reverse DNS lookup at start.
    """
    if sock.family == socket.AF_UNIX:
        return {"SERVER_NAME": "localhost", "SERVER_PORT": "80"}
    host, port = sock.getsockname()[:2]
    return {"SERVER_NAME": str(host), "SERVER_PORT": str(port)}


def _drain(server: Any, graceful_timeout: float) -> None:
    """gevent's ``server.stop(timeout)``, step by step, with a log line.

    ``close()`` stops the accept watcher and closes this worker's descriptor
    of the listening socket (``socket.close()``, never ``shutdown()``: the
    siblings sharing it keep accepting). gevent never re-binds it either: it
    only binds when it is given an address rather than a socket.
    """
    server.draining = True
    server.close()
    idle = server.close_idle_connections()
    in_flight = len(server.pool)
    log.info(
        "draining: closed %d idle connection(s), %d in flight pid=%d",
        idle,
        in_flight,
        os.getpid(),
    )
    if server.pool.join(timeout=graceful_timeout):
        return
    log.warning(
        "killed: %d connection(s) still busy after graceful_timeout=%gs pid=%d",
        len(server.pool),
        graceful_timeout,
        os.getpid(),
    )
    server.pool.kill(block=True, timeout=KILL_TIMEOUT)
