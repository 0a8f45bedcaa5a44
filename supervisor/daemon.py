"""``--daemon`` and ``--pidfile``: detach from the terminal, record the pid.

Running in the foreground is the default and what a service manager wants
(systemd, a container, Circus's own users running ``circusd file.ini``);
``--daemon`` is for starting juggler by hand on a host without one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

from juggler.supervisor.errors import SupervisorError


def detach() -> None:
    """Fork twice so that the daemon is no session leader and has no tty.

    The first child starts a new session and forks the daemon; both parents
    exit at once. The standard streams are pointed at /dev/null unless the
    logs already go to a file (the caller opens it before or after).
    """
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    # The working directory stays, as under Circus: a config's relative
    # paths (stream files, a consumer's script, working_dir left out) mean
    # the same with --daemon as without.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives as long as we do
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


class PidFile:
    """A pid file that refuses to overwrite the pid of a live juggler."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def write(self) -> None:
        other = self._recorded_pid()
        if other is not None and other != os.getpid() and _alive(other):
            raise SupervisorError(
                f"pidfile {self.path} names pid {other}, which is running; "
                "is another juggler using it?"
            )
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise SupervisorError(
                f"cannot write pidfile {self.path}: {exc.strerror}"
            ) from None

    def remove(self) -> None:
        if self._recorded_pid() == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _recorded_pid(self) -> int | None:
        try:
            with open(self.path) as f:
                return int(f.read().strip() or 0) or None
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
