"""The runner's domain errors and the exit codes a supervisor acts on.

Library code raises these; only ``juggler.runner.cli.main`` turns them into a
one-line ``error: ...`` message and an exit code. The codes are a contract
with the supervisor: a process that exits with ``EXIT_BOOT_FAILED`` or
``EXIT_APP_FAILED`` will fail the same way if respawned at once, so the
watcher backs off instead of looping.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BOOT_FAILED = 3
EXIT_APP_FAILED = 4


class RunnerError(Exception):
    """An error the user can fix; its message is one line naming the input."""

    exit_code = EXIT_BOOT_FAILED

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Extra lines shown after the one-line cause, such as the traceback
        # of an exception raised inside the user's own module.
        self.details = details


class UsageError(RunnerError):
    """Options that contradict each other or name something unknown."""

    exit_code = EXIT_USAGE


class BootError(RunnerError):
    """The runner cannot start serving: bad descriptor, address in use..."""

    exit_code = EXIT_BOOT_FAILED


class BindError(BootError):
    """The listening socket cannot be bound or the inherited one is unfit."""


class BackendUnavailable(BootError):
    """A backend's server package is not installed."""


class AppLoadError(RunnerError):
    """The application could not be loaded."""

    exit_code = EXIT_APP_FAILED


class AppImportError(AppLoadError):
    """The application's module is missing or raised while importing."""


class HookError(AppLoadError):
    """A --pre-hook or --post-hook cannot be loaded, or raised."""
