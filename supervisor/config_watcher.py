"""Building a ``WatcherConfig`` from a ``[watcher:NAME]`` section."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from types import MappingProxyType
from typing import Any

from juggler.supervisor.config_env import (
    EnvSection,
    EnvValue,
    apply_virtualenv,
    plain,
    watcher_env,
)
from juggler.supervisor.config_model import (
    UNSUPPORTED_WATCHER_OPTIONS,
    FlappingConfig,
    HookConfig,
    WatcherConfig,
)
from juggler.supervisor.config_runner import unknown_backend
from juggler.supervisor.config_sections import Reader
from juggler.supervisor.config_streams import read_stream
from juggler.supervisor.config_values import (
    READERS,
    UNCHANGED_ID,
    to_bool,
    to_rlimit,
)
from juggler.supervisor.errors import Problems, Where
from juggler.supervisor.ini import Entry, Section
from juggler.supervisor.substitute import (
    OLD_WID,
    SubstitutionError,
    socket_references,
    upgrade_old_wid,
)

HOOK_NAMES = frozenset({
    "before_start", "after_start", "before_spawn", "after_spawn",
    "before_stop", "after_stop", "before_signal", "after_signal",
    "before_reap", "after_reap", "extended_stats",
})  # fmt: skip
# Circus never let a failure of these hooks stop anything.
HOOKS_FAILING_QUIETLY = frozenset({
    "before_stop", "after_stop", "before_signal", "after_signal",
    "extended_stats",
})  # fmt: skip
HOOK_TARGET = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?")
FLAPPING_KEYS = {
    "attempts": "int",
    "window": "duration",
    "retry_in": "duration",
    "max_retry": "int",
    "active": "bool",
}
TEMPLATE_KEYS = ("cmd", "args", "shell_args")


@dataclass(frozen=True)
class Context:
    """What every watcher is read against."""

    environ: Mapping[str, str]
    global_env: Mapping[str, EnvValue]
    env_sections: list[EnvSection]
    # Every [socket:NAME] declared, even one with errors of its own (so a
    # broken socket is reported once, not again by each watcher using it).
    socket_names: frozenset[str]
    flapping: FlappingConfig


def build_watcher(
    section: Section, ctx: Context, problems: Problems
) -> WatcherConfig | None:
    """The watcher, or None after reporting why it cannot be built."""
    name = section.arg
    if not name:
        problems.error(section.where, "a watcher needs a name: [watcher:NAME]")
        return None
    before = len(problems.errors)
    lookup = {**ctx.environ, **plain(ctx.global_env)}
    flags = _env_flags(section, Reader(problems, lookup))
    env = watcher_env(name, environ=ctx.environ, global_env=ctx.global_env,
                      sections=ctx.env_sections, **flags)  # fmt: skip
    reader = Reader(problems, {**lookup, **plain(env)})
    values, rest = reader.table(section, WatcherConfig)
    extra = _read_families(rest, reader, ctx.flapping)
    if section.get("cmd") is None:
        problems.error(section.where, "cmd: missing (the command to run)")
    _check_combinations(section, values, problems)
    _check_identity(section, values, problems)
    if values.get("virtualenv") and values.get("copy_env"):
        _virtualenv(section, values, env, problems)
    _upgrade_old_wid(section, values, problems)
    used = _template_sockets(section, values, env, ctx, problems)
    _check_runner_backend(section, values, plain(env), problems)
    if used is None or len(problems.errors) > before:
        return None
    return _assemble(section, values=values, extra=extra, env=env, used=used, ctx=ctx)


def _env_flags(section: Section, reader: Reader) -> dict[str, bool]:
    # Read ahead of the others (the environment depends on them) with a
    # scratch report: a bad value is reported once, by the full read.
    reader = Reader(Problems(), reader.env)
    flags = {}
    for key in ("copy_env", "copy_path"):
        entry = section.get(key)
        flags[key] = bool(entry and reader.convert(entry, to_bool))
    return flags


def _read_families(
    entries: list[Entry], reader: Reader, flapping: FlappingConfig
) -> dict[str, Any]:
    """``hooks.*``, ``rlimit_*``, ``*_stream.*``, ``flapping.*`` and leftovers."""
    hooks: dict[str, HookConfig] = {}
    rlimits: dict[str, int] = {}
    streams: dict[str, list[Entry]] = {"stdout_stream": [], "stderr_stream": []}
    flap: dict[str, Any] = {}
    for entry in entries:
        key = entry.key.lower()
        prefix, dot, sub = key.partition(".")
        if key.startswith("rlimit_"):
            value = reader.convert(entry, partial(to_rlimit, key[7:]))
            if value is not None:
                rlimits[key[7:]] = value
        elif prefix == "hooks" and dot:
            _read_hook(entry, sub, reader, hooks)
        elif prefix in streams and dot:
            streams[prefix].append(entry)
        elif prefix == "flapping" and sub in FLAPPING_KEYS:
            value = reader.convert(entry, READERS[FLAPPING_KEYS[sub]])
            if value is not None:
                flap["enabled" if sub == "active" else sub] = value
        else:
            _unknown(entry, reader)
    return {
        "hooks": MappingProxyType(hooks),
        "rlimits": MappingProxyType(rlimits),
        "flapping": replace(flapping, **flap),
        **{k: read_stream(k, v, reader) for k, v in streams.items() if v},
    }


def _read_hook(
    entry: Entry, name: str, reader: Reader, hooks: dict[str, HookConfig]
) -> None:
    """``hooks.NAME = module.function`` with an optional ``, true`` flag."""
    text = reader.text(entry)
    if text is None:
        return
    target, _, flag = (part.strip() for part in text.partition(","))
    if not HOOK_TARGET.fullmatch(target):
        reader.problems.error(
            entry.where, f"expected module.function[, true|false], got {text!r}"
        )
        return
    ignore = reader.convert(entry, lambda _: to_bool(flag)) if flag else False
    if ignore is None:
        return
    if name not in HOOK_NAMES:
        reader.problems.warn(
            entry.where, f"unknown hook (it is never called; hooks: "
            f"{', '.join(sorted(HOOK_NAMES))})"
        )  # fmt: skip
    quiet = bool(ignore) or name in HOOKS_FAILING_QUIETLY
    hooks[name] = HookConfig(name, target, quiet)


def _unknown(entry: Entry, reader: Reader) -> None:
    key = entry.key.lower()
    reason = UNSUPPORTED_WATCHER_OPTIONS.get(key)
    if reason is None:
        reader.problems.warn(entry.where, "unknown key for a watcher (ignored)")
    elif reader.convert(entry, to_bool):
        reader.problems.warn(entry.where, f"ignored: {reason} (see README)")


def _check_combinations(
    section: Section, values: dict[str, Any], problems: Problems
) -> None:
    def at(key: str) -> Where:
        entry = section.get(key)
        return entry.where if entry else section.where

    if values.get("copy_path") and not values.get("copy_env"):
        problems.error(at("copy_path"), "needs copy_env = true (as in Circus)")
    if values.get("virtualenv") and not values.get("copy_env"):
        problems.error(at("virtualenv"), "needs copy_env = true (as in Circus)")
    if values.get("singleton") and values.get("numprocesses", 1) > 1:
        problems.error(at("numprocesses"), "a singleton runs at most 1 process")


def _check_runner_backend(
    section: Section, values: dict[str, Any], env: dict[str, str], problems: Problems
) -> None:
    """``runner serve --backend NAME`` with a NAME its runner lacks."""
    if values.get("shell") or "cmd" not in values:
        return
    try:
        words = {k: shlex.split(values[k]) for k in ("cmd", "args") if values.get(k)}
    except ValueError:
        return  # reported when the command is split at spawn time
    reason = unknown_backend([*words.get("cmd", []), *words.get("args", [])], env)
    if reason is not None:
        key = "args" if "--backend" in values.get("args", "") else "cmd"
        problems.error(_where(section, key), reason)


def _check_identity(
    section: Section, values: dict[str, Any], problems: Problems
) -> None:
    """uid and gid: an id the kernel cannot take is an error; a name this
    system does not know is a warning (the config may be checked on
    another machine), and the watcher then refuses to start (launch.py)."""
    for key, lookup in (("uid", _known_user), ("gid", _known_group)):
        text = values.get(key)
        if text is None:
            continue
        if text.isdigit() and int(text) >= UNCHANGED_ID:
            problems.error(
                _where(section, key),
                f"expected a name or a number below {UNCHANGED_ID}, got {text!r}",
            )
        elif not lookup(text):
            what = "user" if key == "uid" else "group"
            problems.warn(
                _where(section, key),
                f"no {what} {text!r} on this system: the watcher cannot start here",
            )


def _known_user(text: str) -> bool:
    try:
        pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except KeyError:
        return False
    return True


def _known_group(text: str) -> bool:
    if text.isdigit():
        return True  # a bare gid needs no entry in the group database
    try:
        grp.getgrnam(text)
    except KeyError:
        return False
    return True


def _virtualenv(
    section: Section,
    values: dict[str, Any],
    env: dict[str, EnvValue | str],
    problems: Problems,
) -> None:
    entry = section.get("virtualenv")
    assert entry is not None
    try:
        apply_virtualenv(env, values["virtualenv"], values.get("virtualenv_py_ver"))
    except (OSError, ValueError) as exc:
        problems.error(entry.where, str(exc))


def _upgrade_old_wid(
    section: Section, values: dict[str, Any], problems: Problems
) -> None:
    for key in ("cmd", "args"):
        if key in values and OLD_WID.search(values[key]):
            problems.warn(_where(section, key), "$WID is deprecated; use $(circus.wid)")
            values[key] = upgrade_old_wid(values[key])


def _assemble(
    section: Section,
    *,
    values: dict[str, Any],
    extra: dict[str, Any],
    env: dict[str, EnvValue | str],
    used: set[str],
    ctx: Context,
) -> WatcherConfig:
    """Pick the inherited sockets and the ``ready`` default; build it."""
    if values.get("use_sockets"):
        used = set(ctx.socket_names)
    values.setdefault("ready", default_ready(values["cmd"]))
    values.setdefault("spare_processes", 1 if is_runner(values["cmd"]) else 0)
    if not values.get("check_flapping", True):
        extra["flapping"] = replace(extra["flapping"], enabled=False)
    return WatcherConfig(
        name=section.arg,
        env=MappingProxyType(plain(env)),
        sockets=frozenset(used),
        **values,
        **extra,
    )


def _template_sockets(
    section: Section,
    values: dict[str, Any],
    env: Mapping[str, EnvValue | str],
    ctx: Context,
    problems: Problems,
) -> set[str] | None:
    """Sockets named by cmd, args, shell_args, env values and stdin_socket."""
    used: set[str] = set()
    places = [(_where(section, k), values[k]) for k in TEMPLATE_KEYS if k in values]
    places += [(v.where, v.value) for v in env.values() if isinstance(v, EnvValue)]
    ok = True
    for where, template in places:
        try:
            used |= socket_references(template, ctx.socket_names)
        except SubstitutionError as exc:
            problems.error(where, str(exc))
            ok = False
    stdin = values.get("stdin_socket")
    if stdin is not None:
        if stdin.lower() not in ctx.socket_names:
            problems.error(_where(section, "stdin_socket"), f"no [socket:{stdin}]")
            return None
        values["stdin_socket"] = stdin.lower()
        used.add(stdin.lower())
    return used if ok else None


def _where(section: Section, key: str) -> Where:
    entry = section.get(key)
    return entry.where if entry else section.where


def is_runner(cmd: str) -> bool:
    """Whether ``cmd`` runs juggler's runner (``runner`` or ``-m juggler.runner``)."""
    try:
        words = shlex.split(cmd)
    except ValueError:
        return False
    if words and os.path.basename(words[0]) == "runner":
        return True
    return "-m" in words[:-1] and words[words.index("-m") + 1] == "juggler.runner"


def default_ready(cmd: str) -> str:
    """``notify`` for juggler's runner, which sends READY=1; else ``warmup``."""
    return "notify" if is_runner(cmd) else "warmup"
