"""Reading the parts of a section that every kind of section shares.

``read_table`` turns the keys of an option table (see ``config_model``) into
values; what it does not know is handed back for the caller's prefix
families (``hooks.*``, ``rlimit_*``...) or reported as unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from juggler.supervisor.config_model import options_of
from juggler.supervisor.config_values import READERS
from juggler.supervisor.errors import Problems
from juggler.supervisor.ini import Entry, Section
from juggler.supervisor.substitute import SubstitutionError, expand_env


class Reader:
    """Reads entries of one section with one environment for $(circus.env)."""

    def __init__(self, problems: Problems, env: Mapping[str, str]) -> None:
        self.problems = problems
        self.env = env

    def text(self, entry: Entry) -> str | None:
        """The value with ``$(circus.env.VAR)`` resolved; None if it failed."""
        try:
            return expand_env(entry.value, self.env)
        except SubstitutionError as exc:
            self.problems.error(entry.where, str(exc))
            return None

    def convert(self, entry: Entry, read: Callable[[str], Any]) -> Any:
        """``read(value)``, or None after reporting why the value is bad."""
        text = self.text(entry)
        if text is None:
            return None
        try:
            return read(text)
        except ValueError as exc:
            self.problems.error(entry.where, str(exc))
            return None

    def table(
        self, entries: Iterable[Entry], cls: type[Any], prefix: str = ""
    ) -> tuple[dict[str, Any], list[Entry]]:
        """Values of the keys ``cls`` declares; the other entries, in order.

        ``prefix`` is removed from the keys first (``stdout_stream.``).
        """
        table = options_of(cls)
        values: dict[str, Any] = {}
        rest: list[Entry] = []
        for entry in entries:
            name = entry.key.lower().removeprefix(prefix)
            spec = table.get(name)
            if spec is None or spec[0].key is not None or spec[0].kind == "raw":
                rest.append(entry)
                continue
            value = self.convert(entry, READERS[spec[0].kind])
            if value is not None:
                values[name] = value
        return values, rest

    def unknown(self, entries: Iterable[Entry], what: str) -> None:
        for entry in entries:
            self.problems.warn(entry.where, f"unknown key for {what} (ignored)")


def read_table(
    section: Section, cls: type[Any], problems: Problems, env: Mapping[str, str]
) -> tuple[dict[str, Any], list[Entry]]:
    """Shortcut: ``Reader(problems, env).table(section, cls)``."""
    return Reader(problems, env).table(section, cls)
