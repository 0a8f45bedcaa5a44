"""``juggler COMMAND ...``: the operator commands, a thin client of control.

Every command prints a table for people and, with ``--json``, the raw result
for scripts; an error prints one ``error:`` line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from juggler.supervisor import endpoint as endpoints
from juggler.supervisor.client import Client
from juggler.supervisor.errors import SupervisorError

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

# Commands the daemon works on for as long as its own deadlines allow
# (graceful_timeout then SIGKILL, ready_timeout, the hooks' timeouts): by
# default the CLI waits for their reply without a deadline of its own. A
# deadline derived from graceful_timeout would have to add up every
# watcher's stop, ready and hook timeouts as the daemon sequences them --
# a guess that fails a healthy stop when it is short. --timeout still sets
# one. Every other command is answered at once, and gets DEFAULT_TIMEOUT.
LONG_COMMANDS = frozenset(
    {"start", "stop", "restart", "reload", "reloadconfig", "incr", "decr"}
    | {"set", "add", "rm", "quit"}
)
DEFAULT_TIMEOUT = 60.0

# name -> (help, arguments); an argument is (name, kwargs for add_argument).
NAME_OPTIONAL = ("name", {"nargs": "?", "help": "a watcher (default: all)"})
NAME_REQUIRED = ("name", {"help": "a watcher"})
COMMANDS: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = {
    "list": ("watchers, or the pids of one", [NAME_OPTIONAL]),
    "status": ("state of the watchers and their processes", [NAME_OPTIONAL]),
    "start": ("start watchers", [NAME_OPTIONAL]),
    "stop": ("stop watchers gracefully", [NAME_OPTIONAL]),
    "restart": (
        "replace every process; rolling unless --all-at-once",
        [
            NAME_OPTIONAL,
            ("--all-at-once", {"action": "store_true", "help": "stop all, then start"}),
        ],
    ),
    "reload": ("graceful restart: new processes ready first", [NAME_OPTIONAL]),
    "reloadconfig": ("re-read the config file and apply the difference", []),
    "incr": (
        "add processes",
        [NAME_REQUIRED, ("nb", {"nargs": "?", "type": int, "default": 1})],
    ),
    "decr": (
        "remove processes",
        [NAME_REQUIRED, ("nb", {"nargs": "?", "type": int, "default": 1})],
    ),
    "numprocesses": ("number of processes", [NAME_OPTIONAL]),
    "numwatchers": ("number of watchers", []),
    "signal": (
        "send a signal: signal NAME [PID] SIGNAL",
        [
            NAME_REQUIRED,
            ("rest", {"nargs": "+", "metavar": "[PID] SIGNAL"}),
            ("--children", {"action": "store_true", "help": "to the process group"}),
        ],
    ),
    "stats": ("CPU, memory, fds and connections per process", [NAME_OPTIONAL]),
    "listsockets": ("the sockets juggler holds", []),
    "options": ("every option of a watcher", [NAME_REQUIRED]),
    "get": ("some options of a watcher", [NAME_REQUIRED, ("keys", {"nargs": "+"})]),
    "set": (
        "change options: set NAME KEY VALUE [KEY VALUE ...]",
        [NAME_REQUIRED, ("pairs", {"nargs": "+", "metavar": "KEY VALUE"})],
    ),
    "globaloptions": ("the [circus] options in force", []),
    "add": (
        "add a watcher: add NAME CMD [--option KEY=VALUE ...]",
        [
            NAME_REQUIRED,
            ("cmd", {"help": "the command, quoted"}),
            ("--start", {"action": "store_true", "help": "start it at once"}),
            (
                "--option",
                {
                    "action": "append",
                    "default": [],
                    "metavar": "KEY=VALUE",
                    "help": "a watcher option, written as in the config file "
                    "(repeatable)",
                },
            ),
        ],
    ),
    "rm": ("stop a watcher and remove it", [NAME_REQUIRED]),
    "quit": ("stop every watcher and exit", []),
    "events": ("stream lifecycle events until interrupted", []),
    "top": ("a live view of watchers, processes and sockets (q quits)", []),
}


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one ``error:`` line (and exit 2), like the rest."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="juggler", description="Drive a running juggler.")
    _add_client_options(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, arguments) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        for arg, kwargs in arguments:
            command.add_argument(arg, **kwargs)
        # Also after the command (juggler status --json): given there, they
        # override; not given, they leave the value set before the command.
        _add_client_options(command, after_command=True)
    return parser


def _add_client_options(
    parser: argparse.ArgumentParser, *, after_command: bool
) -> None:
    """--endpoint, --token-file, --json and --timeout. After the command,
    an option not given must not reset what was given before it."""
    keep: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    endpoint = os.environ.get("JUGGLER_ENDPOINT")
    parser.add_argument(
        "--endpoint",
        help="unix:///path or tcp://host:port (default: the per-user socket, "
        "or $JUGGLER_ENDPOINT)",
        **(keep or {"default": endpoint}),
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="the token of a tcp:// endpoint, in a file only you can read "
        "(default: $JUGGLER_TOKEN, then the token juggler generated for "
        "this endpoint)",
        **keep,
    )
    parser.add_argument("--json", action="store_true", help="print raw JSON", **keep)
    parser.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help=f"seconds to wait for a reply (default: {DEFAULT_TIMEOUT:g}; none "
        "for commands the daemon works on: stop, restart, reload, ...)",
        **keep,
    )


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        request = _request_args(args)
        timeout = reply_timeout(args.command, args.timeout)
        where = endpoints.for_client(args.endpoint)
        token = endpoints.read_token(args.token_file) if args.token_file else None
        with Client(where, token=token, timeout=timeout) as client:
            if args.command == "events":
                return _stream_events(client, args.json)
            if args.command == "top":
                from juggler.supervisor import top

                return top.run(client)
            result = client.call(args.command, **request)
    except SupervisorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(
            f"error: interrupted; juggler may still be doing {args.command}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    _print(args.command, result, as_json=args.json)
    return 0


def reply_timeout(command: str, given: float | None) -> float | None:
    """How long to wait for the reply to ``command`` (None: no limit)."""
    if given is not None:
        return given
    return None if command in LONG_COMMANDS else DEFAULT_TIMEOUT


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"expected more than 0 seconds, got {text}")
    return value


def _request_args(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {}
    if getattr(args, "name", None) is not None:
        request["name"] = args.name
    if getattr(args, "all_at_once", False):
        request["all_at_once"] = True
    if args.command in ("incr", "decr"):
        request["nb"] = args.nb
    if args.command == "get":
        request["keys"] = args.keys
    if args.command == "set":
        if len(args.pairs) % 2:
            raise SupervisorError("set takes KEY VALUE pairs")
        request["options"] = dict(zip(args.pairs[::2], args.pairs[1::2], strict=True))
    if args.command == "add":
        request.update(cmd=args.cmd, start=args.start)
        request["options"] = dict(_option(text) for text in args.option)
    if args.command == "signal":
        if len(args.rest) > 2:
            raise SupervisorError("signal takes NAME [PID] SIGNAL")
        if len(args.rest) == 2:
            if not args.rest[0].isdigit():
                raise SupervisorError(f"pid {args.rest[0]!r} is not a number")
            request["pid"] = int(args.rest[0])
        request["signum"] = args.rest[-1]
        request["children"] = args.children
    return request


def _option(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise SupervisorError(f"--option takes KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _stream_events(client: Client, as_json: bool) -> int:
    try:
        for message in client.events():
            if as_json:
                print(json.dumps(message), flush=True)
            elif "event" in message:
                print(_event_line(message["event"]), flush=True)
            elif "dropped" in message:
                print(f"({message['dropped']} events dropped: reading too slowly)")
    except KeyboardInterrupt:
        pass
    return 0


def _event_line(event: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.pop("time", 0)))
    topic = event.pop("topic", "?")
    details = " ".join(f"{key}={value}" for key, value in event.items())
    return f"{stamp} {topic} {details}"


def _print(command: str, result: Any, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    elif command in ("status", "start", "stop", "restart", "reload", "add"):
        _print_status(result)
    elif isinstance(result, dict):
        for key, value in result.items():
            print(
                f"{key} = {json.dumps(value) if not isinstance(value, str) else value}"
            )
    elif command == "stats":
        _print_stats(result)
    elif command == "listsockets":
        for row in result:
            print(f"{row['name']:<16} fd={row['fd']:<4} {row['location']}")
    elif isinstance(result, list):
        print("\n".join(str(item) for item in result))
    else:
        print(result)


def _print_status(result: dict[str, Any]) -> None:
    watchers = [result] if "state" in result else list(result.values())
    for watcher in watchers:
        processes = watcher["processes"]
        serving = [p for p in processes if not p.get("spare") and not p.get("stopping")]
        print(
            f"{watcher['name']}: {watcher['state']} "
            f"({len(serving)}/{watcher['numprocesses']} processes, "
            f"{watcher['restarts']} restarts)"
        )
        for p in processes:
            ready = "ready" if p["ready"] else "starting"
            ready = "spare" if p.get("spare") else ready
            ready = "stopping" if p.get("stopping") else ready
            print(f"  [{p['wid']}] pid={p['pid']:<8} {ready:<8} up {p['age']:.0f}s")


def _print_stats(rows: list[dict[str, Any]]) -> None:
    header = f"{'watcher':<12} {'wid':>3} {'pid':>7} {'cpu%':>6} {'rss MiB':>8} "
    print(header + f"{'fds':>5} {'threads':>7} {'conns':>5} {'age':>8}")
    for r in rows:
        print(
            f"{r['watcher']:<12} {r['wid']:>3} {r['pid']:>7} {r['cpu']:>6.1f} "
            f"{r['rss'] / 2**20:>8.1f} {r['open_files']:>5} {r['threads']:>7} "
            f"{r['connections']:>5} {r['age']:>7.0f}s"
        )
