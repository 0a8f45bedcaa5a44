"""Watcher options given at run time (``set``, ``add``), read as the file is.

Each value is text, read by the same reader its option has in a config
file, and the result is checked for the combinations the file's reader
refuses (a singleton of several processes, ``copy_path`` without
``copy_env``, an unknown socket). Errors are ``CommandError``: one line,
and nothing is changed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from juggler.supervisor.config_env import apply_virtualenv, plain, watcher_env
from juggler.supervisor.config_model import WatcherConfig, options_of
from juggler.supervisor.config_values import READERS
from juggler.supervisor.config_watcher import TEMPLATE_KEYS, default_ready, is_runner
from juggler.supervisor.control import CommandError
from juggler.supervisor.substitute import SubstitutionError, socket_references

# Identity, or read from several keys at once: no run-time value.
FIXED = frozenset({"name", "sockets", "env", "hooks", "stdout_stream", "stderr_stream"})
# Applied once, when the watcher's environment is built: ``add`` honours
# them, ``set`` cannot change them for a watcher that exists.
ENVIRONMENT = frozenset({"copy_env", "copy_path", "virtualenv", "virtualenv_py_ver"})


def read_options(given: object) -> dict[str, Any]:
    """``{"KEY": "VALUE"}`` -> the values, each read as in an INI file."""
    if not isinstance(given, Mapping):
        raise CommandError("options must be an object of KEY: VALUE")
    return {str(key): read_option(str(key), text) for key, text in given.items()}


def read_option(key: str, text: object) -> Any:
    """One value, read as the config file reads it."""
    spec = options_of(WatcherConfig).get(key)
    if key not in {f.name for f in dataclasses.fields(WatcherConfig)}:
        raise CommandError(f"unknown option {key!r}")
    if spec is None or key in FIXED or spec[0].kind == "raw":
        raise CommandError(f"option {key!r} cannot be set at run time")
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    try:
        return READERS[spec[0].kind](text)
    except ValueError as exc:
        raise CommandError(f"{key}: {exc}") from None


def changed(
    config: WatcherConfig, values: dict[str, Any], sockets: Collection[str]
) -> WatcherConfig:
    """``config`` with ``values`` (the ``set`` command)."""
    fixed = sorted(ENVIRONMENT & values.keys())
    if fixed:
        raise CommandError(
            f"{', '.join(fixed)}: applied when the watcher's environment is "
            "built; change the config file, then reloadconfig"
        )
    # Sockets named in its environment were found when the file was read.
    return _checked(replace(config, **values), sockets, config.sockets)


def added(
    name: str,
    cmd: str,
    values: dict[str, Any],
    sockets: Collection[str],
    global_env: Mapping[str, str],
) -> WatcherConfig:
    """A new watcher of ``cmd`` with ``values`` (the ``add`` command).

    Its environment is built as for a section of the config file with no
    ``[env:NAME]`` of its own: the daemon's variables with ``copy_env``,
    then the ``[env]`` section.
    """
    if "cmd" in values:
        raise CommandError("give the command as CMD, not as an option")
    copy_env = bool(values.get("copy_env"))
    if values.get("copy_path") and not copy_env:
        raise CommandError("copy_path: needs copy_env = true (as in Circus)")
    if values.get("virtualenv") and not copy_env:
        raise CommandError("virtualenv: needs copy_env = true (as in Circus)")
    env = watcher_env(
        name,
        copy_env=copy_env,
        copy_path=bool(values.get("copy_path")),
        environ=os.environ,
        global_env={},
        sections=[],
    )
    env.update(global_env)
    if values.get("virtualenv"):
        try:
            apply_virtualenv(env, values["virtualenv"], values.get("virtualenv_py_ver"))
        except (OSError, ValueError) as exc:
            raise CommandError(f"virtualenv: {exc}") from None
    values.setdefault("ready", default_ready(cmd))
    values.setdefault("spare_processes", 1 if is_runner(cmd) else 0)
    config = WatcherConfig(
        name=name, cmd=cmd, env=MappingProxyType(plain(env)), **values
    )
    in_env = set()
    for template in global_env.values():
        in_env |= _references(template, sockets)
    return _checked(config, sockets, frozenset(in_env))


def _checked(
    config: WatcherConfig, sockets: Collection[str], in_env: frozenset[str]
) -> WatcherConfig:
    """Refuse what the config file refuses; work out the inherited sockets."""
    if config.singleton and config.numprocesses > 1:
        raise CommandError(f"{config.name} is a singleton: numprocesses must be 0 or 1")
    if not config.check_flapping and config.flapping.enabled:
        config = replace(config, flapping=replace(config.flapping, enabled=False))
    if config.stdin_socket is not None:
        config = replace(config, stdin_socket=config.stdin_socket.lower())
    used = set(sockets) if config.use_sockets else _sockets(config, sockets)
    return replace(config, sockets=frozenset(used | in_env))


def _sockets(config: WatcherConfig, sockets: Collection[str]) -> set[str]:
    """Sockets that cmd, args, shell_args and stdin_socket name."""
    used: set[str] = set()
    for key in TEMPLATE_KEYS:
        template = getattr(config, key)
        if template:
            used |= _references(template, sockets)
    if config.stdin_socket is not None:
        if config.stdin_socket.lower() not in sockets:
            raise CommandError(f"stdin_socket: no [socket:{config.stdin_socket}]")
        used.add(config.stdin_socket.lower())
    return used


def _references(template: str, sockets: Collection[str]) -> set[str]:
    try:
        return socket_references(template, sockets)
    except SubstitutionError as exc:
        raise CommandError(str(exc)) from None
