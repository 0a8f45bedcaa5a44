"""``juggler``: the supervisor's command line.

``juggler status|incr|reload ...`` drive a running juggler (see ``ctl.py``).

``juggler --check [--json] CONFIG`` reads a config and reports on it without
binding or spawning anything: exit 0 when it is usable (warnings go to
stderr), 2 with one ``error:`` line per problem when it is not. ``--json``
prints the resolved config for scripts and tests.

``juggler [--log-level L] [--log-output -|FILE] [--daemon --pidfile FILE]
CONFIG`` runs the arbiter (``run_daemon``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from juggler.runner.logs import configure_logging
from juggler.supervisor.config import load, to_json
from juggler.supervisor.config_model import ArbiterConfig
from juggler.supervisor.config_values import LOG_LEVELS
from juggler.supervisor.errors import EXIT_CONFIG, EXIT_OK, ConfigError, SupervisorError

# A failure at run time (a socket that cannot be bound, a pidfile in use).
EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    from juggler.supervisor.ctl import COMMANDS, OneLineParser

    commands = "\n".join(
        f"  {name:<14} {help_text}" for name, (help_text, _) in COMMANDS.items()
    )
    parser = OneLineParser(
        prog="juggler",
        description="Run and watch the processes and sockets of a Circus-style "
        "INI config.",
        epilog="commands for a running juggler (juggler COMMAND --help):\n" + commands,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG", help="the INI file")
    check = parser.add_argument_group("checking a config")
    check.add_argument(
        "--check",
        action="store_true",
        help="read CONFIG, report its errors and warnings, start nothing",
    )
    check.add_argument(
        "--json", action="store_true", help="with --check: print the resolved config"
    )
    run = parser.add_argument_group("running")
    run.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.lower,
        help="overrides [circus] loglevel (default info)",
    )
    run.add_argument(
        "--log-output",
        metavar="-|FILE",
        help="overrides [circus] logoutput (default -, stderr)",
    )
    run.add_argument("--daemon", action="store_true", help="detach from the terminal")
    run.add_argument("--pidfile", metavar="FILE", help="overrides [circus] pidfile")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _is_control_command(argv):
        from juggler.supervisor import ctl

        return ctl.main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json and not args.check:
        parser.error("--json goes with --check")
    if args.check:
        return check(args.config, as_json=args.json)
    # Logging first, so that the config's warnings are logged like the rest.
    if not _configure_logging(args.log_level or "info", args.log_output or "-"):
        return EXIT_CONFIG
    try:
        config = load(args.config)
    except ConfigError as exc:
        return _report_errors(exc)
    return run_daemon(config, args)


def _is_control_command(argv: list[str]) -> bool:
    """``juggler status`` is a command; ``juggler web.ini`` runs a daemon."""
    from juggler.supervisor.ctl import COMMANDS

    takes_value = {"--endpoint", "--timeout", "--token-file"}
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            return arg in COMMANDS and not os.path.isfile(arg)
    return False


def check(path: str, *, as_json: bool = False) -> int:
    """``juggler --check``: print warnings and errors; exit 0 or 2."""
    try:
        config = load(path, log_warnings=False)
    except ConfigError as exc:
        return _report_errors(exc)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if as_json:
        json.dump(to_json(config), sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    return EXIT_OK


def _report_errors(exc: ConfigError) -> int:
    for message in exc.errors:
        print(f"error: {message}", file=sys.stderr)
    return EXIT_CONFIG


# -- running the arbiter ------------------------------------------------------
# Kept apart from the checking above: the arbiter (and asyncio with it) is
# imported only when a daemon is really started.


def run_daemon(config: ArbiterConfig, args: argparse.Namespace) -> int:
    """Apply the [circus] settings the command line did not override, then
    run the arbiter until it is stopped."""
    from juggler.supervisor import arbiter
    from juggler.supervisor.daemon import PidFile, detach

    level = args.log_level or ("debug" if config.debug else config.loglevel)
    output = args.log_output or config.logoutput
    if (level or output) and not _configure_logging(level or "info", output or "-"):
        return EXIT_CONFIG
    if config.loggerconfig and not _apply_logger_config(config.loggerconfig):
        return EXIT_CONFIG
    if config.umask is not None:
        os.umask(config.umask)
    pidfile_path = args.pidfile or config.pidfile
    pidfile = PidFile(pidfile_path) if pidfile_path else None
    if args.daemon:
        detach()
    try:
        if pidfile is not None:
            pidfile.write()
        return arbiter.run(config)
    except SupervisorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if pidfile is not None:
            pidfile.remove()


def _configure_logging(level: str, output: str) -> bool:
    try:
        configure_logging(level, output)
    except OSError as exc:
        print(
            f"error: cannot open log output {output}: {exc.strerror}", file=sys.stderr
        )
        return False
    return True


def _apply_logger_config(path: str) -> bool:
    """Circus's ``loggerconfig``: a logging config file (INI, JSON or YAML)
    applied over the defaults; ``default`` keeps them."""
    import logging.config

    if path == "default":
        return True
    try:
        if path.endswith((".yaml", ".yml")):
            _dict_config(_read_yaml(path))
        elif path.endswith(".json"):
            with open(path) as f:
                _dict_config(json.load(f))
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        print(f"error: loggerconfig {path}: {exc}", file=sys.stderr)
        return False
    return True


def _dict_config(settings: dict[str, object]) -> None:
    import logging.config

    settings.setdefault("version", 1)
    settings.setdefault("disable_existing_loggers", False)
    logging.config.dictConfig(settings)


def _read_yaml(path: str) -> dict[str, object]:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise ImportError("a YAML file needs PyYAML (pip install pyyaml)") from None
    with open(path) as f:
        loaded = yaml.safe_load(f)
    if not isinstance(loaded, dict):
        raise ValueError("expected a mapping of logging settings")
    return loaded


if __name__ == "__main__":
    sys.exit(main())
