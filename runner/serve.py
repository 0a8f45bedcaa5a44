"""Boot a worker: socket, backend, app, hooks, then serve until stopped.

The order matters. A backend named on the command line is prepared before
the app is imported, because gevent must monkey-patch first. With
``--backend auto`` the app is imported first, since its kind (WSGI or ASGI)
picks the backend; the automatic choices (wsgiref, uvicorn) patch nothing.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from juggler.backends import registry
from juggler.backends.base import App, Backend, Interface, ServeContext, ServeOptions
from juggler.backends.signals import StopRequest
from juggler.runner import listen
from juggler.runner.accesslog import wrap_access_log
from juggler.runner.app import (
    AppSpec,
    add_python_paths,
    detect_interface,
    load_app,
    load_hook,
    parse_spec,
    user_traceback,
)
from juggler.runner.errors import (
    EXIT_OK,
    BootError,
    HookError,
    RunnerError,
    UsageError,
)
from juggler.runner.forwarded import TrustedProxies, wrap_forwarded
from juggler.runner.notify import Notifier
from juggler.runner.standby import standby_fd_from_environ, wait_for_promotion

log = logging.getLogger("juggler.runner")

# nginx's default keepalive_timeout for idle connections to an upstream.
PROXY_KEEPALIVE_TIMEOUT = 60

# The listen queue when the runner binds its own socket (chaussette's too).
DEFAULT_BACKLOG = 2048


@dataclass(frozen=True)
class Settings:
    """The runner's resolved command line."""

    app: AppSpec
    app_args: tuple[str, ...] = ()
    fd: int | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    uds: str | None = None
    backlog: int = DEFAULT_BACKLOG
    expect_family: int | None = None
    expect_type: int | None = None
    backend: str = "auto"
    interface: str = "auto"
    options: ServeOptions = field(default_factory=ServeOptions)
    access_log: bool = False
    forwarded: TrustedProxies = field(default_factory=TrustedProxies)
    python_path: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    pre_hook: str | None = None
    post_hook: str | None = None


def settings_from_args(
    args: argparse.Namespace,
    families: Mapping[str, int],
    types: Mapping[str, int],
) -> Settings:
    """Check the options against each other and build ``Settings``."""
    fd, host, uds = args.fd, args.host, args.uds
    # chaussette's spellings: --host fd://3 and --host unix:/path
    if host is not None and host.startswith("fd://"):
        fd, host = _parse_fd_host(host), None
    elif host is not None and host.startswith("unix:"):
        uds, host = host.removeprefix("unix:"), None
    if sum(x is not None for x in (fd, host, uds)) > 1:
        raise UsageError("give only one of --fd, --host/--port and --uds")
    if fd is None and (args.address_family or args.socket_type):
        log.warning("--address-family/--socket-type only apply with --fd")
    # Given at all, even at chaussette's own default, it is ignored with --fd.
    if fd is not None and args.backlog is not None:
        log.warning("--backlog is ignored with --fd: the parent set the backlog")

    return Settings(
        app=parse_spec(args.app),
        app_args=tuple(args.app_args),
        fd=fd,
        host=host or "127.0.0.1",
        port=args.port,
        uds=uds,
        backlog=DEFAULT_BACKLOG if args.backlog is None else args.backlog,
        expect_family=families[args.address_family] if args.address_family else None,
        expect_type=types[args.socket_type] if args.socket_type else None,
        backend=args.backend,
        interface=args.interface,
        options=_serve_options(args),
        access_log=args.access_log,
        forwarded=_trusted_proxies(args.forwarded_allow_ips),
        python_path=tuple(_split_paths(args.python_path)),
        env=tuple(_parse_env(item) for item in args.env),
        pre_hook=args.pre_hook,
        post_hook=args.post_hook,
    )


def _serve_options(args: argparse.Namespace) -> ServeOptions:
    _warn_short_keepalive(args.keepalive_timeout)
    if args.graceful_timeout < 0:
        raise UsageError("--graceful-timeout must be 0 or more seconds")
    if args.header_timeout <= 0 or args.io_timeout <= 0:
        raise UsageError("--header-timeout and --io-timeout must be more than 0")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError("--spawn/--threads must be at least 1")
    return ServeOptions(
        graceful_timeout=args.graceful_timeout,
        keepalive_timeout=args.keepalive_timeout,
        header_timeout=args.header_timeout,
        io_timeout=args.io_timeout,
        concurrency=args.concurrency,
        monkey_patch=args.monkey_patch,
    )


def _warn_short_keepalive(timeout: float) -> None:
    """Say so when idle connections close before a proxy's do.

    A proxy that keeps connections to the workers alive (nginx's upstream
    ``keepalive``) reuses one it believes open; if the worker closed it a
    moment before, the request fails and a POST, which nginx does not
    retry, gets 502. The worker's idle timeout must outlast the proxy's.
    """
    if 0 < timeout < PROXY_KEEPALIVE_TIMEOUT:
        log.warning(
            "--keepalive-timeout %gs is shorter than nginx's upstream "
            "keepalive_timeout (%ds by default): nginx may send a request on a "
            "connection this worker is closing and answer 502; set nginx's "
            "below %gs",
            timeout,
            PROXY_KEEPALIVE_TIMEOUT,
            timeout,
        )


def _trusted_proxies(text: str) -> TrustedProxies:
    try:
        return TrustedProxies.parse(text)
    except ValueError as exc:
        raise UsageError(f"--forwarded-allow-ips: {exc}") from None


def _parse_fd_host(host: str) -> int:
    try:
        return int(host.removeprefix("fd://"))
    except ValueError:
        raise UsageError(f'--host "{host}": expected fd://NUMBER') from None


def _split_paths(values: list[str]) -> list[str]:
    return [path for value in values for path in value.split(os.pathsep) if path]


def _parse_env(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f'--env "{item}": expected KEY=VALUE')
    return key, value


def run(settings: Settings, stop: StopRequest) -> int:
    """Serve until a stop signal; return the exit code.

    ``stop`` has recorded the stop signals since ``main`` began. One that
    came before serving ends the runner with exit 0 and no serving; one
    that comes while the backend takes over the handlers is handed on to
    the backend's own (``_on_ready``).
    """
    os.environ.update(dict(settings.env))
    add_python_paths(list(settings.python_path))
    notifier = Notifier.from_environ()
    standby_fd = standby_fd_from_environ()
    worker = _boot(settings, notifier, stop)
    own_file = own_socket_file(settings)
    try:
        if standby_fd is not None and not wait_for_promotion(
            standby_fd, notifier, stop
        ):
            return EXIT_OK
        _serve(worker, settings, stop)
    finally:
        if own_file is not None:
            own_file.remove()
    log.info("stopped: pid=%d", os.getpid())
    return EXIT_OK


def _serve(worker: _Worker, settings: Settings, stop: StopRequest) -> None:
    if _stopped_during_boot(stop):
        return
    _run_pre_hook(worker.pre_hook, settings)
    try:
        if not _stopped_during_boot(stop):
            worker.backend.serve(worker.sock, worker.app, worker.context)
    finally:
        _run_post_hook(worker.post_hook, settings)


@dataclass(frozen=True)
class _Worker:
    """Everything booted and ready to serve."""

    sock: socket.socket
    backend: Backend
    app: App
    context: ServeContext
    pre_hook: _Hook | None
    post_hook: _Hook | None


def _boot(settings: Settings, notifier: Notifier, stop: StopRequest) -> _Worker:
    sock = open_listener(settings)
    backend = None
    if settings.backend != "auto":
        backend = _prepare(settings.backend, settings.options)

    sys.argv = [str(settings.app), *settings.app_args]
    app = load_app(settings.app)
    # Both hooks are imported now, so that a typo in either fails the boot
    # (exit 4) rather than surfacing only when the worker stops.
    pre_hook = _load_hook("--pre-hook", settings.pre_hook)
    post_hook = _load_hook("--post-hook", settings.post_hook)
    interface = _interface(settings, app)
    if backend is None:
        backend = _prepare(registry.DEFAULT_FOR_INTERFACE[interface], settings.options)
    _check_compatible(backend, interface, sock)
    if settings.access_log:
        app = wrap_access_log(app, interface)
    if settings.forwarded.enabled:
        # Outside the access log, which then logs the forwarded client.
        app = wrap_forwarded(app, interface, settings.forwarded)

    options = _with_interface(settings.options, interface)
    ready = functools.partial(_on_ready, notifier, settings, backend, sock, stop)
    context = ServeContext(
        options,
        on_ready=ready,
        on_draining=lambda: _on_draining(notifier, options),
    )
    return _Worker(sock, backend, app, context, pre_hook, post_hook)


def _stopped_during_boot(stop: StopRequest) -> bool:
    if stop.signum is None:
        return False
    log.info(
        "stop requested during boot: signal=%s pid=%d; not serving",
        signal.Signals(stop.signum).name,
        os.getpid(),
    )
    return True


def own_socket_file(settings: Settings) -> listen.OwnSocketFile | None:
    """The UNIX socket file bound here (--uds), to remove at exit; an
    inherited socket's file is its parent's, and stays."""
    if settings.fd is None and settings.uds is not None:
        return listen.OwnSocketFile(settings.uds)
    return None


def open_listener(settings: Settings) -> socket.socket:
    """The socket to serve: inherited with --fd, else bound here."""
    if settings.fd is not None:
        return listen.inherit(
            settings.fd,
            expect_family=settings.expect_family,
            expect_type=settings.expect_type,
        )
    if settings.uds is not None:
        return listen.bind_unix(settings.uds, settings.backlog)
    return listen.bind_tcp(settings.host, settings.port, settings.backlog)


def _prepare(name: str, options: ServeOptions) -> Backend:
    backend = registry.load(name)
    log.debug("preparing backend %s", name)
    backend.prepare(options)
    return backend


def _interface(settings: Settings, app: App) -> Interface:
    if settings.interface == "wsgi":
        return "wsgi"
    if settings.interface == "asgi":
        return "asgi"
    detected = detect_interface(app)
    log.debug("app %s looks like %s", settings.app, detected.upper())
    return detected


def _check_compatible(
    backend: Backend, interface: Interface, sock: socket.socket
) -> None:
    if interface not in backend.interfaces:
        speaks = " and ".join(sorted(i.upper() for i in backend.interfaces))
        others = [
            name for name in registry.BUILTIN if interface in _interfaces_of(name)
        ]
        raise BootError(
            f"backend {backend.name} serves {speaks} apps only and the app is "
            f"{interface.upper()}; use --backend {' or '.join(others)}, or "
            "--interface if the app was misdetected"
        )
    if sock.family == socket.AF_UNIX and not backend.supports_unix:
        raise BootError(f"backend {backend.name} cannot serve a UNIX socket")


def _interfaces_of(name: str) -> frozenset[str]:
    """The interfaces a backend speaks; none if its adapter cannot load."""
    try:
        return frozenset(registry.load(name).interfaces)
    except RunnerError:
        return frozenset()


def _with_interface(options: ServeOptions, interface: Interface) -> ServeOptions:
    return replace(options, interface=interface)


def _on_ready(
    notifier: Notifier,
    settings: Settings,
    backend: Backend,
    sock: socket.socket,
    stop: StopRequest,
) -> None:
    if stop.signum is not None:
        # The stop came after the last look, while the backend was putting
        # its own handlers in place (every backend does before it reports
        # ready): raised again, it reaches those, and the backend drains.
        log.info(
            "stop requested during boot: signal=%s pid=%d; passed to the backend",
            signal.Signals(stop.signum).name,
            os.getpid(),
        )
        signal.raise_signal(stop.signum)
        return
    log.info(
        "serving: app=%s backend=%s on %s pid=%d",
        settings.app,
        backend.name,
        listen.describe(sock),
        os.getpid(),
    )
    notifier.ready()


def _on_draining(notifier: Notifier, options: ServeOptions) -> None:
    log.info(
        "draining: pid=%d graceful_timeout=%gs", os.getpid(), options.graceful_timeout
    )
    notifier.stopping()


@dataclass(frozen=True)
class _Hook:
    option: str
    target: str
    function: Callable[[Settings], object]


def _load_hook(option: str, target: str | None) -> _Hook | None:
    if target is None:
        return None
    return _Hook(option, target, load_hook(option, target))


def _run_pre_hook(hook: _Hook | None, settings: Settings) -> None:
    """A pre-hook that raises fails the boot: exit 4, no serving."""
    if hook is None:
        return
    log.info("running %s %s pid=%d", hook.option, hook.target, os.getpid())
    try:
        hook.function(settings)
    except Exception as exc:
        raise HookError(
            f'{hook.option} "{hook.target}" raised {type(exc).__name__}: {exc}',
            details=user_traceback(exc),
        ) from None


def _run_post_hook(hook: _Hook | None, settings: Settings) -> None:
    """A post-hook that raises is logged and changes nothing else.

    The worker has stopped by now, cleanly or not; the exit status must keep
    saying how the stop went (a supervisor reads 0 as "stopped as asked"),
    and an exception from here would replace one already on its way out.
    """
    if hook is None:
        return
    log.info("running %s %s pid=%d", hook.option, hook.target, os.getpid())
    try:
        hook.function(settings)
    except Exception as exc:
        log.error(
            '%s "%s" raised %s: %s pid=%d\n%s',
            hook.option,
            hook.target,
            type(exc).__name__,
            exc,
            os.getpid(),
            user_traceback(exc),
        )
