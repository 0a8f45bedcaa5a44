"""``runner``: the worker program's command line.

``runner serve [options] APP`` serves a WSGI or ASGI app. For Circus users,
``runner --fd 3 app:app`` (no subcommand) works too, so that a
``chaussette --fd $(circus.sockets.web) app:app`` line needs only its program
name changed. ``runner backends`` lists the backends and whether their server
package is installed.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence

from juggler.backends import registry
from juggler.backends.signals import StopRequest
from juggler.runner import forwarded, parent, serve
from juggler.runner.errors import EXIT_OK, EXIT_USAGE, BootError, RunnerError
from juggler.runner.logs import LOG_LEVELS, configure_logging

log = logging.getLogger("juggler.runner")

SUBCOMMANDS = ("serve", "backends")

ADDRESS_FAMILIES = {
    "AF_INET": socket.AF_INET,
    "AF_INET6": socket.AF_INET6,
    "AF_UNIX": socket.AF_UNIX,
}
SOCKET_TYPES = {
    "SOCK_STREAM": socket.SOCK_STREAM,
    "SOCK_DGRAM": socket.SOCK_DGRAM,
    "SOCK_RAW": socket.SOCK_RAW,
    "SOCK_RDM": socket.SOCK_RDM,
    "SOCK_SEQPACKET": socket.SOCK_SEQPACKET,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner",
        allow_abbrev=False,
        description="Serve a WSGI or ASGI app on an inherited or bound socket.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_parser(sub)
    sub.add_parser("backends", help="list the backends and whether they are installed")
    return parser


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve_parser = sub.add_parser(
        "serve",
        allow_abbrev=False,
        help="serve an app",
        description="Serve APP (module:attr, module:factory() or paste:FILE#name).",
    )
    add = serve_parser.add_argument
    add("app", metavar="APP", help="module:attr, module:attr.attr, module:factory()")
    add("app_args", metavar="ARG", nargs="*", help="left in sys.argv[1:] for the app")

    where = serve_parser.add_argument_group("where to listen")
    where.add_argument("--fd", type=int, help="serve this inherited listening socket")
    where.add_argument(
        "--host",
        default=None,
        help="bind this address (default 127.0.0.1); chaussette's "
        "unix:PATH and fd://N forms are accepted",
    )
    where.add_argument("--port", type=int, default=8080, help="default 8080")
    where.add_argument("--uds", metavar="PATH", help="bind this UNIX socket path")
    where.add_argument(
        "--backlog",
        type=int,
        default=None,
        help=f"listen queue when binding here (default {serve.DEFAULT_BACKLOG}; "
        "ignored with --fd)",
    )
    where.add_argument(
        "--address-family",
        choices=sorted(ADDRESS_FAMILIES),
        help="with --fd: the family the socket must have",
    )
    where.add_argument(
        "--socket-type",
        choices=sorted(SOCKET_TYPES),
        help="with --fd: the type the socket must have",
    )

    how = serve_parser.add_argument_group("how to serve")
    how.add_argument(
        "--backend",
        default="auto",
        help="HTTP server to use: auto (wsgiref for WSGI, uvicorn for ASGI) or "
        "one of `runner backends`",
    )
    how.add_argument("--interface", choices=("auto", "wsgi", "asgi"), default="auto")
    how.add_argument(
        "--spawn",
        "--threads",
        dest="concurrency",
        type=int,
        help="greenlets (gevent, meinheld) or threads (wsgiref, waitress, "
        "werkzeug) per worker",
    )
    how.add_argument(
        "--no-monkey",
        dest="monkey_patch",
        action="store_false",
        help="do not monkey-patch the stdlib (gevent, meinheld)",
    )
    how.add_argument("--graceful-timeout", type=float, default=30.0, metavar="S")
    how.add_argument(
        "--keepalive-timeout",
        type=float,
        default=75.0,
        metavar="S",
        help="idle keep-alive connections are closed after S seconds "
        "(default 75, longer than nginx's 60)",
    )
    how.add_argument(
        "--header-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="a request head must arrive within S seconds of its first byte, "
        "or it is answered 408 and closed (default 30; meinheld: not applied)",
    )
    how.add_argument(
        "--io-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="drop a connection whose request body pauses, or whose client "
        "reads none of its response, for S seconds (default 30)",
    )
    how.add_argument(
        "--forwarded-allow-ips",
        default=forwarded.DEFAULT,
        metavar="LIST",
        help="peers whose X-Forwarded-For/-Proto set the client address and "
        "scheme the app sees: addresses, networks, unix (a UNIX-socket peer), "
        "* (any); empty for none (default 127.0.0.1)",
    )
    how.add_argument(
        "--python-path",
        action="append",
        default=[],
        metavar="DIR",
        help="prepend DIR to sys.path (repeatable, or DIR1:DIR2)",
    )
    how.add_argument("--env", action="append", default=[], metavar="K=V")
    how.add_argument("--pre-hook", metavar="module:fn", help="called before serving")
    how.add_argument("--post-hook", metavar="module:fn", help="called after stopping")
    how.add_argument(
        "--reload",
        "--use-reloader",
        dest="reload",
        action="store_true",
        help="restart when a source file changes (development)",
    )

    logs = serve_parser.add_argument_group("logging")
    logs.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="info",
    )
    logs.add_argument("--log-output", default="-", help="file, or - for stderr")
    logs.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request (off by default: it costs throughput)",
    )


def _normalise_argv(argv: Sequence[str]) -> list[str]:
    """Accept chaussette's form, where the serve options come first."""
    args = list(argv)
    if args and args[0] not in (*SUBCOMMANDS, "-h", "--help"):
        args.insert(0, "serve")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # First of all: a parent that dies from here on is noticed (parent.py),
    # and a stop signal from here on is recorded, not fatal (serve.run).
    parent_pid = os.getppid()
    stop = StopRequest()
    stop.install()
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(sys.argv[1:] if argv is None else argv))
    if args.command == "backends":
        return _list_backends()

    try:
        _configure_logging(args.log_level, args.log_output)
        if not parent.exit_with_parent(parent_pid):
            log.info("parent pid=%d exited during boot; not serving", parent_pid)
            return EXIT_OK
        settings = serve.settings_from_args(args, ADDRESS_FAMILIES, SOCKET_TYPES)
        if args.reload:
            from juggler.runner.reloader import run_with_reloader

            args_given = sys.argv[1:] if argv is None else argv
            return run_with_reloader(settings, args_given, stop)
        return serve.run(settings, stop)
    except RunnerError as exc:
        _report(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK


def _configure_logging(level: str, output: str) -> None:
    try:
        configure_logging(level, output)
    except OSError as exc:
        raise BootError(f"cannot open --log-output {output}: {exc.strerror}") from None


def _report(exc: RunnerError) -> None:
    log.debug("failed", exc_info=exc)
    if exc.details:
        print(exc.details, file=sys.stderr)
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.exit_code == EXIT_USAGE:
        print("(see runner serve --help)", file=sys.stderr)


def _list_backends() -> int:
    import importlib.util

    for name in registry.names():
        try:
            backend = registry.load(name)
        except RunnerError as exc:
            print(f"{name:<10}  unavailable: {exc.message}")
            continue
        package = getattr(backend, "package", None)
        installed = package is None or importlib.util.find_spec(package) is not None
        interfaces = ",".join(sorted(backend.interfaces))
        state = (
            "installed"
            if installed
            else f"missing: pip install 'juggler[{backend.extra}]'"
        )
        print(f"{name:<10}  {interfaces:<9}  {state}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
