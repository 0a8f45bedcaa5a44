"""The lifeline: nothing a worker started outlives the arbiter.

Each child gets a parent-death signal (process.py), so it stops when the
arbiter dies, even of SIGKILL. What the child started -- an app's
subprocess, a shell's pipeline -- gets none, and would run on as an orphan
of init, holding ports, files and memory nobody watches. So the arbiter
starts a small helper process first of all, the *lifeline*: it holds the
read end of a pipe whose only writer is the arbiter. The arbiter writes a
line for each process group it starts (``+PGID SIGNUM TIMEOUT``: every
child leads a group of its own) and for each it is done with (``-PGID``:
the leader was reaped).

End of file on that pipe means the arbiter is gone, however it died: the
kernel closes the write end then. The lifeline stops every group it knows
as the watcher would have -- its stop signal, then SIGKILL for what is left
after its graceful timeout -- and exits. A clean shutdown says ``bye``
first, and the lifeline exits without a signal.

The lifeline is forked twice, so that it is no child of the arbiter (and
never counted among its processes), and it ignores the stop signals, so
that a SIGTERM to the arbiter's whole process group cannot end it first.

Known shortcomings:

- A process that left its group (``setsid``, ``setpgid``) is not found: a
  cgroup would find it, and juggler runs without one.
- A group is forgotten when its leader is reaped. A stop kills what the
  leader left in it first (process.py), but what a worker that crashed
  left behind runs on; killing it would take the same kill at every
  death, which a worker whose children are meant to outlive it would not
  want.
- Groups are signalled by number. The lifeline stops signalling one as soon
  as it finds it empty; a number reused within ``POLL`` seconds (the pid
  space wrapping around meanwhile) would get the signal.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import time

log = logging.getLogger("juggler.supervisor")

POLL = 0.02
PR_SET_NAME = 15
IGNORED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)

# A group's number -> its stop signal and graceful timeout.
Groups = dict[int, tuple[int, float]]


class Lifeline:
    """The arbiter's end of the pipe to the lifeline process."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def start(cls) -> Lifeline:
        """Fork the lifeline; call it before any thread or child exists."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        middle = os.fork()
        if middle == 0:
            _run_lifeline(read_fd)  # never returns
        os.close(read_fd)
        os.waitpid(middle, 0)  # it exits as soon as the lifeline is forked
        # A line is at most PIPE_BUF bytes, so each write is whole or fails.
        os.set_blocking(write_fd, False)
        return cls(write_fd)

    def watch(self, pgid: int, signum: int, timeout: float) -> None:
        self._send(f"+{pgid} {int(signum)} {timeout}\n")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        """A clean shutdown: the lifeline exits without signalling anyone."""
        self._send("bye\n")
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _send(self, line: str) -> None:
        if self._fd < 0:
            return
        try:
            os.write(self._fd, line.encode())
        except OSError as exc:
            # Gone or stuck: the stack runs on without the safety net.
            log.error(
                "lifeline: cannot reach it (%s); if juggler dies, what its "
                "processes started may outlive it",
                exc.strerror or exc,
            )
            os.close(self._fd)
            self._fd = -1


_current: Lifeline | None = None


def start() -> None:
    """Start the process-wide lifeline (the arbiter does, once)."""
    global _current
    try:
        _current = Lifeline.start()
    except OSError as exc:
        # Worth a warning, not a refusal to run: it only matters if juggler
        # itself dies.
        log.warning(
            "lifeline: cannot start it (%s); if juggler dies, what its "
            "processes started may outlive it",
            exc.strerror or exc,
        )


def watch(pgid: int, signum: int, timeout: float) -> None:
    """Have the lifeline stop group ``pgid`` if the arbiter dies."""
    if _current is not None:
        _current.watch(pgid, signum, timeout)


def forget(pgid: int) -> None:
    if _current is not None:
        _current.forget(pgid)


def close() -> None:
    global _current
    if _current is not None:
        _current.close()
        _current = None


# -- the lifeline process ------------------------------------------------------


def _run_lifeline(read_fd: int) -> None:
    """The forked child: fork the lifeline, which waits for the end of file.

    Nothing here may return into the arbiter's code, whatever happens.
    """
    try:
        if os.fork() > 0:
            os._exit(0)
        read_fd = _detach(read_fd)
        groups = _read_groups(read_fd)
        if groups is not None:
            _stop_groups(groups)
    finally:
        os._exit(0)


def _detach(read_fd: int) -> int:
    """Keep nothing of the arbiter's but the pipe; return its descriptor."""
    for signum in IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    fd = fcntl.fcntl(read_fd, fcntl.F_DUPFD_CLOEXEC, 3)
    devnull = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(devnull, std)
    # The write end above all: with a copy here, no end of file would come.
    os.closerange(3, fd)
    os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
    # Its own name in ps and top (it shares the arbiter's command line).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, b"lifeline", 0, 0, 0)
    return fd


def _read_groups(fd: int) -> Groups | None:
    """The groups alive when the pipe ended; None after a clean ``bye``."""
    groups: Groups = {}
    pending = b""
    while chunk := os.read(fd, 4096):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line == b"bye":
                return None
            _apply(groups, line.decode())
    return groups


def _apply(groups: Groups, line: str) -> None:
    if line.startswith("+"):
        pgid, signum, timeout = line[1:].split()
        groups[int(pgid)] = (int(signum), float(timeout))
    elif line.startswith("-"):
        groups.pop(int(line[1:]), None)


def _stop_groups(groups: Groups) -> None:
    """Stop signal to each group; SIGKILL to what is left at its timeout."""
    now = time.monotonic()
    deadlines = {
        pgid: now + timeout
        for pgid, (signum, timeout) in groups.items()
        if _signal_group(pgid, signum)
    }
    while deadlines:
        time.sleep(POLL)
        for pgid, deadline in list(deadlines.items()):
            if not _signal_group(pgid, 0):
                del deadlines[pgid]  # empty: never signal that number again
            elif time.monotonic() >= deadline:
                _signal_group(pgid, signal.SIGKILL)
                del deadlines[pgid]


def _signal_group(pgid: int, signum: int) -> bool:
    """Signal a group; False if it has no process left."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True
