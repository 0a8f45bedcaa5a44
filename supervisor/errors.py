"""The supervisor's domain errors.

Library code raises these; only ``juggler.supervisor.cli.main`` turns them
into ``error: ...`` lines and an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_CONFIG = 2


@dataclass(frozen=True)
class Where:
    """A place in a config file: the file, the line, the section, the key."""

    file: str
    line: int
    section: str | None = None
    key: str | None = None

    def prefix(self) -> str:
        """``FILE:LINE: [section] key:`` -- the start of every message."""
        text = f"{self.file}:{self.line}:"
        if self.section is not None:
            text += f" [{self.section}]"
            if self.key is not None:
                text += f" {self.key}"
            text += ":"
        return text

    def say(self, reason: str) -> str:
        return f"{self.prefix()} {reason}"


class SupervisorError(Exception):
    """An error the user can fix; its message is one line naming the input."""


class ConfigError(SupervisorError):
    """The configuration cannot be used as written.

    ``errors`` holds every message found in one pass, so that ``--check``
    can show them all at once; ``str()`` is the first.
    """

    def __init__(self, message: str, *, errors: tuple[str, ...] = ()) -> None:
        self.errors = errors or (message,)
        super().__init__(self.errors[0])

    @classmethod
    def at(cls, where: Where, reason: str) -> ConfigError:
        return cls(where.say(reason))


class BindError(SupervisorError):
    """A listening socket cannot be bound, or an adopted one is unfit."""


class SpawnError(SupervisorError):
    """A process cannot be started: missing program, bad uid, bad cwd..."""


class Problems:
    """Collects the errors and warnings of one config load.

    Reading goes on after an error so that ``juggler --check`` can list
    every mistake at once; ``raise_errors`` ends the load if any was found.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, where: Where, reason: str) -> None:
        self.errors.append(where.say(reason))

    def fail(self, message: str) -> None:
        """An error with no line to point at (the file itself is missing)."""
        self.errors.append(message)

    def warn(self, where: Where, reason: str) -> None:
        self.warnings.append(where.say(reason))

    def raise_errors(self) -> None:
        if self.errors:
            raise ConfigError(self.errors[0], errors=tuple(self.errors))
