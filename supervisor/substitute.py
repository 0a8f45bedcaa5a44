"""Circus's substitutions: ``$(circus.NAME)`` and ``$VAR``.

Two kinds, resolved at two moments:

- ``$(circus.env.VAR)`` is resolved when the config is read, from the
  supervisor's environment plus ``[env]`` (plus the watcher's ``[env:...]``
  sections inside a watcher). Circus allowed it in any value.
- ``$(circus.wid)`` and ``$(circus.sockets.NAME)`` can only be known when a
  process is spawned: the wid is its slot, and a socket's number is the
  descriptor the arbiter got when it bound it (the child inherits it at the
  same number). They stay in ``cmd``, ``args`` and ``env`` as templates, are
  checked when the config is read, and ``render`` fills them in.

Every name is case-insensitive and ``((circus.NAME))`` is the same as
``$(circus.NAME)``, as in Circus. Circus also let a command name any watcher
option (``$(circus.numprocesses)``); juggler refuses those names with a
clear error rather than guess what a rendered option should look like.

Known shortcoming: Circus expanded ``$(circus.env.VAR)`` a second time at
spawn, from the watcher's environment as a ``before_spawn`` hook may have
changed it (its example10.ini relies on that). juggler resolves it once,
when reading, so the variable must exist then; supporting the old way would
need ``render`` to take the process's final environment and the check here
to accept names that only a hook defines.

``$VAR`` (and ``${VAR}``, which Circus did not have) is the shell-style form
that Circus applied to environment values only, from the supervisor's own
environment: ``PATH = $PATH:/bin``. Like Circus, ``$VAR`` must be upper
case, so a lower-case ``$secret`` in a password is left alone.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

_NAME = r"[\w.\-]+"
CIRCUS_VAR = re.compile(
    rf"\$\(circus\.(?P<a>{_NAME})\)|\(\(circus\.(?P<b>{_NAME})\)\)", re.IGNORECASE
)
SHELL_VAR = re.compile(r"\$(?:(?P<plain>[A-Z]+[A-Z0-9_]*)|\{(?P<braced>\w+)\})")
# Circus's deprecated spelling of $(circus.wid).
OLD_WID = re.compile(r"\$WID\b")

KNOWN = "$(circus.wid), $(circus.sockets.NAME), $(circus.env.VAR)"


class SubstitutionError(ValueError):
    """A ``$(circus.NAME)`` that names nothing; the message says which."""


def _name(match: re.Match[str]) -> str:
    return match["a"] or match["b"]


def lookup(env: Mapping[str, str], name: str) -> str | None:
    """``env[name]``, else the one key equal to it ignoring case."""
    if name in env:
        return env[name]
    folded = name.lower()
    for key, value in env.items():
        if key.lower() == folded:
            return value
    return None


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Replace every ``$(circus.env.VAR)``; leave the spawn-time names."""

    def replace(match: re.Match[str]) -> str:
        name = _name(match)
        if name[:4].lower() != "env.":
            return match[0]
        value = lookup(env, name[4:])
        if value is None:
            raise SubstitutionError(
                f"{match[0]}: {name[4:]} is not set in the environment "
                "nor in an [env] section"
            )
        return value

    return CIRCUS_VAR.sub(replace, text)


def socket_references(template: str, sockets: Collection[str]) -> set[str]:
    """The socket names ``template`` uses, lower-cased; raise on unknown names.

    ``sockets`` holds the lower-cased names of the declared sockets.
    """
    found: set[str] = set()
    for match in CIRCUS_VAR.finditer(template):
        name = _name(match).lower()
        if name == "wid":
            continue
        kind, _, arg = name.partition(".")
        if kind == "sockets" and arg:
            if arg not in sockets:
                known = ", ".join(sorted(sockets)) or "none"
                raise SubstitutionError(
                    f"{match[0]}: no [socket:{arg}] section (sockets: {known})"
                )
            found.add(arg)
            continue
        raise SubstitutionError(f"{match[0]}: unknown name (juggler knows {KNOWN})")
    return found


def upgrade_old_wid(text: str) -> str:
    """Circus's deprecated ``$WID`` spelled as ``$(circus.wid)``."""
    return OLD_WID.sub("$(circus.wid)", text)


def render(template: str, *, wid: int, socket_fds: Mapping[str, int]) -> str:
    """Fill in ``$(circus.wid)`` and ``$(circus.sockets.NAME)`` at spawn.

    Called by the arbiter for each process it spawns, with the descriptor
    number of every bound socket (names in any case). The template was
    checked when the config was read, so an unknown name here is a bug in
    the caller and raises ``KeyError``.
    """
    fds = {name.lower(): fd for name, fd in socket_fds.items()}

    def replace(match: re.Match[str]) -> str:
        name = _name(match).lower()
        if name == "wid":
            return str(wid)
        kind, _, arg = name.partition(".")
        if kind == "sockets" and arg in fds:
            return str(fds[arg])
        raise KeyError(f"{match[0]} cannot be rendered: no such socket")

    return CIRCUS_VAR.sub(replace, template)


def expand_shell_vars(text: str, environ: Mapping[str, str], missing: set[str]) -> str:
    """Replace ``$VAR`` and ``${VAR}`` from ``environ``; unset ones add to
    ``missing`` and expand to nothing (which is what Circus did)."""

    def replace(match: re.Match[str]) -> str:
        name = match["plain"] or match["braced"]
        if name not in environ:
            missing.add(name)
            return ""
        return environ[name]

    return SHELL_VAR.sub(replace, text)
