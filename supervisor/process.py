"""One child process: spawn it, hear of its death at once, signal it safely.

A child is started in its own process group (so a stop can reach whatever
it started, and a Ctrl-C at the supervisor's terminal does not reach it),
with the environment, working directory, rlimits, groups, uid/gid and umask
its watcher asks for, and a parent-death signal so that it cannot outlive a
supervisor killed with SIGKILL.

Its death is seen through a pidfd registered with the event loop: the loop
wakes the moment the child exits, with no polling interval and no SIGCHLD
handler. Signals go through the same pidfd (``pidfd_send_signal``), and the
pidfd is closed once the child is reaped, so a signal can never reach a
recycled pid. When a child that was told to stop exits, whatever it left
in its group is killed before the reap: a stop leaves no process behind.

A watcher with an output stream gets a pipe per stream (``OutputPipe``):
the loop reads it as data arrives, so the child never blocks on a full
pipe, and when the child dies what is left is read before the pipe closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import pwd
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from juggler.supervisor.errors import SpawnError
from juggler.supervisor.notify import NotifyChannel
from juggler.supervisor.streams import LineSplitter, OutputStream, Piece

log = logging.getLogger("juggler.supervisor")

PR_SET_PDEATHSIG = 1
# A pipe of 256 KiB (the default is 64) lets a chatty child run ahead of
# the loop longer; each wake-up reads up to that much.
PIPE_SIZE = READ_SIZE = 256 * 1024
# At the child's death, read at most this much more: a grandchild that
# kept the pipe and keeps writing must not hold the loop.
DRAIN_LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True)
class SpawnSpec:
    """Everything needed to start one process, already rendered for its wid."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    executable: str | None = None
    cwd: str | None = None
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    rlimits: Mapping[int, tuple[int, int]] = field(default_factory=dict)
    pass_fds: tuple[int, ...] = ()
    # "devnull" (close_child_stdin), None to inherit the supervisor's, or
    # the descriptor of a socket (stdin_socket).
    stdin: str | int | None = "devnull"
    # None: inherit the supervisor's stream; "devnull": discard it.
    stdout: str | None = None
    stderr: str | None = None
    # A stream to pipe the output to (unless discarded above).
    stdout_sink: OutputStream | None = None
    stderr_sink: OutputStream | None = None


def _stdin_target(stdin: str | int | None) -> int | None:
    """Popen's stdin for ``SpawnSpec.stdin``."""
    if stdin == "devnull":
        return subprocess.DEVNULL
    assert not isinstance(stdin, str), stdin
    return stdin


# Exit codes of the runner that mean "respawning now would fail again".
HOPELESS_EXIT_CODES = {3: "cannot boot", 4: "app failed to load"}


def exit_description(status: int) -> str:
    """``status=1`` or ``signal=SIGKILL`` from a waitpid status."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return f"signal={_signal_name(signum)}"
    return f"status={os.waitstatus_to_exitcode(status)}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class Process:
    """A running child, known by its watcher name, ``wid`` and ``pid``."""

    def __init__(
        self,
        watcher: str,
        wid: int,
        popen: subprocess.Popen[bytes],
        pidfd: int,
        notify: NotifyChannel | None,
        *,
        outputs: tuple[OutputPipe, ...] = (),
    ) -> None:
        self.watcher = watcher
        self.wid = wid
        self.pid = popen.pid
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.exit_status: int | None = None
        self.stopping = False  # a stop was asked: its exit is expected
        self.on_trial = False  # a replacement not yet ready (watcher.py)
        # A spare waits on its standby pipe (write end here) until promoted.
        self.spare = False
        self.standby_fd: int | None = None
        self._popen = popen
        self._pidfd: int | None = pidfd
        self.notify = notify
        self.outputs = outputs
        self.exited = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"{self.watcher}[{self.wid}] pid={self.pid}"

    @property
    def alive(self) -> bool:
        return self.exit_status is None

    def age(self) -> float:
        return time.monotonic() - self.started_at

    def send_signal(self, signum: int, *, group: bool = False) -> bool:
        """Signal the child (or its whole group); False if already reaped."""
        if self._pidfd is None:
            return False
        try:
            if group:
                os.killpg(self.pid, signum)
            else:
                signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    def _on_pidfd_readable(self) -> None:
        if self.stopping and self._has_exited():
            self._kill_leftovers()
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8  # reaped elsewhere: unknown
        if pid == 0:
            return  # spurious wake-up; the child still runs
        self._reaped(status)

    def _has_exited(self) -> bool:
        """Whether the child has exited, without reaping it."""
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        try:
            return os.waitid(os.P_PID, self.pid, flags) is not None
        except ChildProcessError:
            return False  # reaped elsewhere: its number may be reused

    def _kill_leftovers(self) -> None:
        """A stop leaves nothing behind: kill what the process started and
        left in its group. Done before the reap, while the dead process
        still holds the group's number, so that no other group can have
        taken it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def _reaped(self, status: int) -> None:
        loop = asyncio.get_running_loop()
        assert self._pidfd is not None
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self.exit_status = status
        self._popen.returncode = os.waitstatus_to_exitcode(status)
        if self.notify is not None:
            self.notify.close()
        self.release_standby()
        for output in self.outputs:
            output.finish()
        if not self.exited.done():
            self.exited.set_result(status)

    def promote(self) -> bool:
        """Tell a spare to serve now; False if it is gone."""
        if self.standby_fd is None:
            return False
        try:
            os.write(self.standby_fd, b"\1")
        except OSError:
            return False
        finally:
            self.release_standby()
        self.spare = False
        return self.alive

    def release_standby(self) -> None:
        """Close our end of the standby pipe (a waiting spare then exits)."""
        if self.standby_fd is not None:
            os.close(self.standby_fd)
            self.standby_fd = None

    def exit_code(self) -> int | None:
        """The exit code, or None if it died of a signal or still runs."""
        if self.exit_status is None or os.WIFSIGNALED(self.exit_status):
            return None
        return os.waitstatus_to_exitcode(self.exit_status)


class OutputPipe:
    """The arbiter's end of a child's stdout or stderr pipe.

    Made before the fork; ``child_fd`` becomes the child's stream and is
    closed here once the child has it. Each end is closed exactly once.
    """

    def __init__(self, sink: OutputStream) -> None:
        self.sink = sink
        self.fd, self.child_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.fd, False)
        with contextlib.suppress(OSError):  # above pipe-max-size: keep 64 KiB
            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.pid = 0
        self._splitter = LineSplitter()

    def start(self, pid: int) -> None:
        """The child runs: close its end here and read ours on the loop."""
        self.pid = pid
        self._close_child_end()
        asyncio.get_running_loop().add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            log.error("output: pid=%d %s: %s", self.pid, self.sink.name, exc)
            data = b""
        if data:
            self._deliver(self._splitter.feed(data))
        else:
            self.finish()  # the child (and all it started) closed the pipe

    def finish(self) -> None:
        """The child died: read what is left, then close the pipe."""
        if self.fd < 0:
            return
        drained = 0
        with contextlib.suppress(OSError):
            while drained < DRAIN_LIMIT and (data := os.read(self.fd, READ_SIZE)):
                drained += len(data)
                self._deliver(self._splitter.feed(data))
        self._deliver(self._splitter.flush())
        if self.pid:
            asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1

    def abort(self) -> None:
        """The spawn failed: close both ends."""
        self._close_child_end()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _close_child_end(self) -> None:
        if self.child_fd >= 0:
            os.close(self.child_fd)
            self.child_fd = -1

    def _deliver(self, pieces: list[Piece]) -> None:
        if pieces:
            self.sink.write(self.pid, pieces)


def spawn(
    watcher: str,
    wid: int,
    spec: SpawnSpec,
    notify_dir: str | None = None,
    *,
    standby: bool = False,
) -> Process:
    """Start one child; raise ``SpawnError`` with a one-line cause.

    With ``notify_dir``, the child gets a NOTIFY_SOCKET of its own there
    (notify.py). With ``standby``, the child is a spare: it gets the read end
    of a pipe in JUGGLER_STANDBY_FD and waits on it before serving
    (runner/standby.py).
    """
    loop = asyncio.get_running_loop()
    notify = _notify_channel(watcher, wid, spec, notify_dir)
    env = dict(spec.env)
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.path
    pass_fds = spec.pass_fds
    standby_read = standby_write = None
    if standby:
        standby_read, standby_write = os.pipe2(os.O_CLOEXEC)
        env["JUGGLER_STANDBY_FD"] = str(standby_read)
        pass_fds = (*pass_fds, standby_read)
    stdout = _output_pipe(spec.stdout, spec.stdout_sink)
    stderr = _output_pipe(spec.stderr, spec.stderr_sink)
    outputs = tuple(p for p in (stdout, stderr) if p is not None)
    try:
        popen = subprocess.Popen(
            spec.argv,
            executable=spec.executable,
            env=env,
            cwd=spec.cwd,
            stdin=_stdin_target(spec.stdin),
            stdout=_stream_target(spec.stdout, stdout),
            stderr=_stream_target(spec.stderr, stderr),
            pass_fds=pass_fds,
            process_group=0,
            # preexec_fn is the only way to order rlimits, credentials and
            # PDEATHSIG; it makes only lock-free calls (see _child_setup),
            # as other threads of the arbiter may hold locks at the fork.
            preexec_fn=_child_setup(spec, os.getpid()),  # noqa: PLW1509
        )
    except (OSError, subprocess.SubprocessError) as exc:
        if notify is not None:
            notify.close()
        _close(standby_read, standby_write)
        for output in outputs:
            output.abort()
        raise SpawnError(
            f"{watcher}[{wid}]: cannot start {spec.argv[0]}: {exc}"
        ) from exc
    _close(standby_read)  # the child has its copy
    for output in outputs:
        output.start(popen.pid)
    pidfd = os.pidfd_open(popen.pid)
    process = Process(watcher, wid, popen, pidfd, notify, outputs=outputs)
    process.standby_fd = standby_write
    process.spare = standby
    loop.add_reader(pidfd, process._on_pidfd_readable)
    return process


def _notify_channel(
    watcher: str, wid: int, spec: SpawnSpec, directory: str | None
) -> NotifyChannel | None:
    """The child's NOTIFY_SOCKET, in ``directory``, owned by its user."""
    if directory is None:
        return None
    try:
        return NotifyChannel(directory, uid=spec.uid, gid=spec.gid)
    except OSError as exc:
        raise SpawnError(
            f"{watcher}[{wid}]: cannot make its notify socket in {directory}: "
            f"{exc.strerror or exc}"
        ) from exc


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def _output_pipe(kind: str | None, sink: OutputStream | None) -> OutputPipe | None:
    return OutputPipe(sink) if sink is not None and kind != "devnull" else None


def _stream_target(kind: str | None, pipe: OutputPipe | None) -> int | None:
    if kind == "devnull":
        return subprocess.DEVNULL
    return pipe.child_fd if pipe is not None else None


def _child_setup(spec: SpawnSpec, supervisor_pid: int) -> Callable[[], None]:
    """The code run in the child between fork and exec.

    Order matters: rlimits first (raising a hard limit needs root), then the
    groups, gid and uid, then the parent-death signal, because the kernel
    clears that signal whenever the credentials change.
    """
    # The user's groups are looked up here, before the fork: in the child
    # only calls that take no lock are safe (another thread of the arbiter,
    # a hook's or the stats sampler's, may hold the user database's lock at
    # the fork, and initgroups() would wait on it forever).
    groups = _supplementary_groups(spec.uid, spec.gid)
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        for resource_id, limits in spec.rlimits.items():
            resource.setrlimit(resource_id, limits)
        if spec.gid is not None:
            os.setgroups(groups)
            os.setresgid(spec.gid, spec.gid, spec.gid)
        if spec.uid is not None:
            os.setresuid(spec.uid, spec.uid, spec.uid)
        if spec.umask is not None:
            os.umask(spec.umask)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != supervisor_pid:
            os._exit(1)  # the supervisor died while we were starting

    return setup


def _supplementary_groups(uid: int | None, gid: int | None) -> list[int]:
    """The groups of the user ``uid`` (with ``gid``), as login would set
    them; just ``gid`` for a uid without a name."""
    if gid is None:
        return []
    try:
        user = pwd.getpwuid(uid).pw_name if uid is not None else None
    except KeyError:
        user = None
    if user is None:
        return [gid]
    return os.getgrouplist(user, gid)
