"""Reading a Circus configuration file, unchanged, into juggler's values.

``load(path)`` reads the file and its includes (``ini``), resolves the
parse-time substitutions, checks every value against the option table
(``config_model``) and returns a frozen ``ArbiterConfig``. Every problem
names its place as ``FILE:LINE: [section] key: reason``: errors are raised
together in one ``ConfigError``; warnings (unknown keys, Circus features
juggler does not have) are logged and kept in ``ArbiterConfig.warnings``.

Nothing here binds, spawns or imports user code: ``juggler --check`` runs
this alone. ``$(circus.wid)`` and ``$(circus.sockets.NAME)`` are left in
the watchers' templates for ``render`` at spawn time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import signal
import socket
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, TypeVar

from juggler.supervisor.config_env import (
    EnvValue,
    env_sections,
    plain,
    read_env_section,
)
from juggler.supervisor.config_model import (
    UNSUPPORTED_CIRCUS_OPTIONS,
    ArbiterConfig,
    FlappingConfig,
    SocketConfig,
    WatcherConfig,
)
from juggler.supervisor.config_sections import Reader
from juggler.supervisor.config_values import READERS
from juggler.supervisor.config_watcher import Context, build_watcher
from juggler.supervisor.errors import ConfigError, Problems
from juggler.supervisor.ini import Document, Section, read_tree
from juggler.supervisor.substitute import render

__all__ = [
    "ArbiterConfig",
    "ConfigError",
    "SocketConfig",
    "WatcherConfig",
    "load",
    "render",
    "to_json",
]

log = logging.getLogger("juggler.supervisor")

Named = TypeVar("Named", SocketConfig, WatcherConfig)

SECTION_KINDS = frozenset({"circus", "watcher", "socket", "env", "plugin"})
FLAPPING_PLUGINS = frozenset({
    "circus.plugins.flapping.Flapping",
    "circus.plugins.flapping:Flapping",
})  # fmt: skip


def load(
    path: str,
    *,
    environ: Mapping[str, str] | None = None,
    log_warnings: bool = True,
) -> ArbiterConfig:
    """Read ``path``; raise ``ConfigError`` listing every error found.

    ``environ`` is the supervisor's environment (``os.environ`` if None):
    the source of ``$VAR``, ``$(circus.env.VAR)`` and ``copy_env``.
    """
    environ = dict(os.environ if environ is None else environ)
    problems = Problems()
    doc = read_tree(path, problems, environ)
    problems.raise_errors()
    config = _build(path, doc, environ, problems)
    problems.raise_errors()
    assert config is not None
    if log_warnings:
        for warning in problems.warnings:
            log.warning("config: %s", warning)
    return replace(config, warnings=tuple(problems.warnings))


def _build(
    path: str, doc: Document, environ: dict[str, str], problems: Problems
) -> ArbiterConfig | None:
    _warn_unknown_sections(doc, problems)
    global_env = _global_env(doc, environ, problems)
    lookup = {**environ, **plain(global_env)}
    arbiter = _read_circus(doc, Reader(problems, lookup))
    sockets = _read_sockets(doc, Reader(problems, lookup))
    ctx = Context(
        environ=environ,
        global_env=global_env,
        env_sections=env_sections(
            [s for s in doc.of_kind("env") if s.qualified], environ, lookup, problems
        ),
        socket_names=frozenset(s.arg.lower() for s in doc.of_kind("socket")),
        flapping=_read_plugins(doc, Reader(problems, lookup)),
    )
    watchers = [build_watcher(s, ctx, problems) for s in doc.of_kind("watcher")]
    _warn_unmatched_env(ctx, [s.arg for s in doc.of_kind("watcher")], problems)
    return replace(
        arbiter,
        path=os.path.abspath(path),
        env=MappingProxyType(plain(global_env)),
        sockets=_by_name(sockets),
        watchers=_by_name([w for w in watchers if w is not None]),
        files=tuple(doc.files),
    )


def _by_name(items: list[Named]) -> Mapping[str, Named]:
    return MappingProxyType({i.name: i for i in sorted(items, key=lambda i: i.name)})


def _warn_unknown_sections(doc: Document, problems: Problems) -> None:
    for section in doc.sections.values():
        if section.kind == "default":
            problems.warn(
                section.where,
                "ignored: juggler does not copy [DEFAULT] into other sections",
            )
        elif section.kind not in SECTION_KINDS or section.name.lower().startswith(
            "circus:"
        ):
            problems.warn(section.where, "unknown section (ignored)")


def _global_env(
    doc: Document, environ: dict[str, str], problems: Problems
) -> dict[str, EnvValue]:
    """``[env]``: ``$(circus.env.X)`` in it reads the supervisor's environment."""
    sections = [s for s in doc.of_kind("env") if not s.qualified]
    if not sections:
        return {}
    return read_env_section(sections[0], environ, environ, problems)


def _read_circus(doc: Document, reader: Reader) -> ArbiterConfig:
    sections = doc.of_kind("circus")
    if not sections:
        return ArbiterConfig(path="")
    values, rest = reader.table(sections[0], ArbiterConfig)
    for entry in rest:
        if entry.key.lower() == "allowed_users":
            uids = reader.convert(entry, to_uids)
            if uids is not None:
                values["allowed_users"] = uids
            continue
        reason = UNSUPPORTED_CIRCUS_OPTIONS.get(entry.key.lower())
        if reason is None:
            reader.problems.warn(entry.where, "unknown key for [circus] (ignored)")
        else:
            reader.problems.warn(entry.where, f"ignored: {reason} (see README)")
    owner = sections[0].get("endpoint_owner")
    if owner is not None and values.get("endpoint_owner") is not None:
        reader.convert(owner, to_uid)  # an unknown user is an error here
    return ArbiterConfig(path="", **values)


def to_uid(text: str) -> int:
    """A user, by name (looked up in the passwd database) or by uid."""
    word = text.strip()
    if word.isdigit():
        return int(word)
    try:
        return pwd.getpwnam(word).pw_uid
    except KeyError:
        raise ValueError(f"no user named {word!r} on this system") from None


def to_uids(text: str) -> frozenset[int]:
    """``alice, 1001`` -> their uids."""
    words = [word for word in text.replace(",", " ").split() if word]
    if not words:
        raise ValueError("expected user names or uids, separated by commas")
    return frozenset(to_uid(word) for word in words)


def _read_sockets(doc: Document, reader: Reader) -> list[SocketConfig]:
    found: dict[str, SocketConfig] = {}
    for section in doc.of_kind("socket"):
        name = section.arg.lower()
        if not name:
            reader.problems.error(section.where, "a socket needs a name: [socket:NAME]")
            continue
        if name in found:
            reader.problems.error(
                section.where, f"a second socket named {name} (names ignore case)"
            )
            continue
        sock = _read_socket(section, name, reader)
        if sock is not None:
            found[name] = sock
    return list(found.values())


def _read_socket(section: Section, name: str, reader: Reader) -> SocketConfig | None:
    before = len(reader.problems.errors)
    values, rest = reader.table(section, SocketConfig)
    reader.unknown(rest, "a socket")
    if values.get("path") is not None:
        if values.get("family", socket.AF_UNIX) != socket.AF_UNIX:
            reader.problems.warn(
                _where(section, "family"), "ignored: a path makes it AF_UNIX"
            )
        values["family"] = socket.AF_UNIX
    elif values.get("family") == socket.AF_UNIX and values.get("fd") is None:
        reader.problems.error(_where(section, "family"), "AF_UNIX needs a path")
    if values.get("type", socket.SOCK_STREAM) != socket.SOCK_STREAM:
        reader.problems.error(
            _where(section, "type"), "juggler binds SOCK_STREAM sockets only"
        )
    if values.get("proto") is not None:
        reader.problems.warn(
            _where(section, "proto"), "ignored: the family's default protocol is used"
        )
    if values.get("fd", 0) < 0:
        reader.problems.error(_where(section, "fd"), "expected a descriptor number")
    if len(reader.problems.errors) > before:
        return None
    return SocketConfig(name=name, **values)


def _read_plugins(doc: Document, reader: Reader) -> FlappingConfig:
    """Circus's flapping plugin becomes the built-in policy; others are skipped."""
    flapping = FlappingConfig()
    for section in doc.of_kind("plugin"):
        use = section.get("use")
        target = reader.text(use) if use else None
        if use is None:
            reader.problems.error(section.where, "use: missing (the plugin class)")
        elif target in FLAPPING_PLUGINS:
            flapping = _flapping_plugin(section, reader)
        elif target is not None:
            reader.problems.warn(
                use.where,
                f"ignored: plugin {target} (juggler runs no Circus plugins; "
                "see README)",
            )
    return flapping


def _flapping_plugin(section: Section, reader: Reader) -> FlappingConfig:
    keys = {"attempts": "int", "window": "duration", "retry_in": "duration",
            "max_retry": "int", "active": "bool"}  # fmt: skip
    values: dict[str, Any] = {"enabled": True}
    for entry in section:
        key = entry.key.lower()
        if key in ("use", "priority"):
            continue
        if key not in keys:
            reader.problems.warn(entry.where, "unknown key for the flapping plugin")
            continue
        value = reader.convert(entry, READERS[keys[key]])
        if value is not None:
            values["enabled" if key == "active" else key] = value
    return FlappingConfig(**values)


def _warn_unmatched_env(ctx: Context, names: list[str], problems: Problems) -> None:
    for section in ctx.env_sections:
        if not any(section.matches(name) for name in names):
            problems.warn(section.where, "matches no watcher")


def _where(section: Section, key: str) -> Any:
    entry = section.get(key)
    return entry.where if entry else section.where


def to_json(config: ArbiterConfig) -> dict[str, Any]:
    """The resolved config as JSON-ready values (``juggler --check --json``).

    Signals, families and socket types are names; umasks are octal strings.
    """
    return {
        "path": config.path,
        "files": list(config.files),
        "circus": {
            k: _json_value(k, getattr(config, k))
            for k in (
                "endpoint",
                "token_file",
                "endpoint_owner",
                "allowed_users",
                "pidfile",
                "loglevel",
                "logoutput",
                "loggerconfig",
                "debug",
                "umask",
                "warmup_delay",
            )
        },
        "env": dict(config.env),
        "sockets": {n: json_object(s) for n, s in config.sockets.items()},
        "watchers": {n: json_object(w) for n, w in config.watchers.items()},
        "warnings": list(config.warnings),
    }


def json_object(obj: Any) -> dict[str, Any]:
    """A config dataclass as JSON-ready values."""
    return {
        f.name: _json_value(f.name, getattr(obj, f.name))
        for f in dataclasses.fields(obj)
    }


def _json_value(name: str, value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_object(value)
    if isinstance(value, Mapping):
        return {k: _json_value(k, v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return sorted(value)
    named = _NAMED.get(name)
    if named is not None and isinstance(value, int):
        return named(value)
    return value


# Numbers that read better as names (or, for a umask, as octal).
_NAMED = {
    "umask": lambda v: f"{v:04o}",
    "stop_signal": lambda v: signal.Signals(v).name,
    "family": lambda v: socket.AddressFamily(v).name,
    "type": lambda v: socket.SocketKind(v).name,
}
