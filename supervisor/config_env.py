"""A watcher's environment: ``[env]``, ``[env:PATTERNS]``, copy_env, virtualenv.

Precedence, lowest first, as in Circus: the arbiter's own environment (only
with ``copy_env``), ``PYTHONPATH`` from ``copy_path``, ``[env]``, then every
``[env:...]`` section whose patterns match the watcher's name, in the order
the sections appear (a later one wins). Patterns are comma-separated
shell globs, matched case-sensitively: ``[env:web,worker*]``, ``[env:*]``.

Values may use ``$VAR`` / ``${VAR}`` (from the arbiter's environment) and
``$(circus.env.VAR)`` (from that environment plus ``[env]``).

``copy_env`` copies the arbiter's environment except ``ARBITER_ONLY``: the
variables addressed to the arbiter itself. A worker that found systemd's
NOTIFY_SOCKET would announce itself as the service (``MAINPID=`` its own
pid); LISTEN_FDS and LISTEN_PID describe descriptors the arbiter was handed;
JUGGLER_TOKEN is the key to the control channel. Each of them would also
reach every program the app starts. A config that means a process to have
one names it in an env section.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from juggler.supervisor.errors import Problems, Where
from juggler.supervisor.ini import Section
from juggler.supervisor.substitute import (
    SubstitutionError,
    expand_env,
    expand_shell_vars,
)

ARBITER_ONLY = frozenset({
    "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC",
    "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
    "JUGGLER_TOKEN",
})  # fmt: skip


@dataclass(frozen=True)
class EnvValue:
    """One variable set by an env section, and the line that set it."""

    value: str
    where: Where


@dataclass(frozen=True)
class EnvSection:
    """An ``[env:PATTERNS]`` section, its values already expanded."""

    patterns: tuple[str, ...]
    values: Mapping[str, EnvValue]
    where: Where

    def matches(self, watcher: str) -> bool:
        return any(fnmatchcase(watcher, p) for p in self.patterns)


def read_env_section(
    section: Section,
    environ: Mapping[str, str],
    lookup_env: Mapping[str, str],
    problems: Problems,
) -> dict[str, EnvValue]:
    """The section's variables with ``$(circus.env.X)`` and ``$VAR`` done."""
    values: dict[str, EnvValue] = {}
    for entry in section:
        missing: set[str] = set()
        try:
            text = expand_env(entry.value, lookup_env)
        except SubstitutionError as exc:
            problems.error(entry.where, str(exc))
            continue
        text = expand_shell_vars(text, environ, missing)
        for name in sorted(missing):
            problems.warn(entry.where, f"${name} is not set; it expands to nothing")
        values[entry.key] = EnvValue(text, entry.where)
    return values


def env_sections(
    sections: list[Section],
    environ: Mapping[str, str],
    lookup_env: Mapping[str, str],
    problems: Problems,
) -> list[EnvSection]:
    """Every ``[env:PATTERNS]`` section, in file order."""
    found = []
    for section in sections:
        patterns = tuple(p.strip() for p in section.arg.split(",") if p.strip())
        if not patterns:
            problems.error(section.where, "no watcher name or pattern after env:")
            continue
        values = read_env_section(section, environ, lookup_env, problems)
        found.append(EnvSection(patterns, values, section.where))
    return found


def watcher_env(
    name: str,
    *,
    copy_env: bool,
    copy_path: bool,
    environ: Mapping[str, str],
    global_env: Mapping[str, EnvValue],
    sections: list[EnvSection],
) -> dict[str, EnvValue | str]:
    """The watcher's variables; ``EnvValue`` for those a config line set."""
    env: dict[str, EnvValue | str] = {}
    if copy_env:
        env.update((k, v) for k, v in environ.items() if k not in ARBITER_ONLY)
        if copy_path:
            env["PYTHONPATH"] = os.pathsep.join(sys.path)
    env.update(global_env)
    for section in sections:
        if section.matches(name):
            env.update(section.values)
    return env


def plain(env: Mapping[str, EnvValue | str]) -> dict[str, str]:
    return {k: v.value if isinstance(v, EnvValue) else v for k, v in env.items()}


def apply_virtualenv(
    env: dict[str, EnvValue | str], root: str, py_ver: str | None
) -> None:
    """Put a virtualenv's ``bin`` on PATH and its site-packages on PYTHONPATH.

    As Circus did, for a ``cmd`` run by another interpreter than the
    virtualenv's own; paths listed in its ``.pth`` files come first.
    Raises ``ValueError`` when the site-packages folder is not there.
    """
    version = py_ver or "{}.{}".format(*sys.version_info[:2])
    tried = [
        os.path.join(root, "lib", f"{impl}{version}", "site-packages")
        for impl in ("python", "pypy")
    ]
    sitedir = next((d for d in tried if os.path.isdir(d)), None)
    if sitedir is None:
        raise ValueError(f"no site-packages folder: tried {', '.join(tried)}")
    bindir = os.path.join(root, "bin")
    current = plain(env)
    if os.path.isdir(bindir):
        env["PATH"] = _join(bindir, current.get("PATH"))
    paths = [*_pth_paths(sitedir), current.get("PYTHONPATH"), sitedir]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)


def _join(first: str, rest: str | None) -> str:
    return os.pathsep.join([first, rest]) if rest else first


def _pth_paths(sitedir: str) -> list[str]:
    """Existing folders named by the ``.pth`` files of ``sitedir``."""
    found: list[str] = []
    for name in sorted(os.listdir(sitedir)):
        if not name.endswith(".pth"):
            continue
        try:
            with open(os.path.join(sitedir, name), encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            if not line or line.startswith(("#", "import")):
                continue
            path = os.path.abspath(os.path.join(sitedir, line.rstrip()))
            if os.path.isdir(path) and path not in found:
                found.append(path)
    return found
