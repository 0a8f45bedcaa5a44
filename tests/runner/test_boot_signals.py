"""Signals while the runner boots, and a parent that dies meanwhile.

From the first line of ``main`` a stop signal is recorded, not fatal: one
that arrives before serving ends the runner with exit 0 and no serving, one
that arrives while the backend takes over the handlers reaches the
backend's own. The parent's pid is read first thing too, so a parent that
dies before the parent-death signal is armed is noticed.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest

from juggler.backends import registry
from juggler.backends.signals import StopRequest
from juggler.runner import serve
from juggler.runner.app import parse_spec
from juggler.runner.notify import Notifier

APP = "hello:app"


def hooked_runner(
    tmp_path: Path, backend: str, sleep: float = 1.0
) -> harness.RunnerProcess:
    args = [
        *("--env", f"RUNNER_HOOK_DIR={tmp_path}"),
        *("--env", f"RUNNER_HOOK_SLEEP={sleep}"),
        *("--pre-hook", "runner_hooks:sleepy", "--post-hook", "runner_hooks:mark"),
    ]
    return harness.RunnerProcess(APP, backend=backend, extra_args=args)


@pytest.mark.parametrize("backend", ["wsgiref", "gevent", "meinheld"])
def test_sigterm_during_boot_exits_zero_without_serving(
    tmp_path: Path, backend: str
) -> None:
    runner = hooked_runner(tmp_path, backend)
    try:
        runner.start(wait_ready=False)
        harness.wait_for((tmp_path / "sleepy").exists, message="pre-hook running")
        runner.signal(signal.SIGTERM)
        assert runner.wait() == 0
        log = runner.log()
    finally:
        runner.stop()
    assert "stop requested during boot: signal=SIGTERM" in log, log
    assert "serving: " not in log
    assert not any("READY=1" in m for m in runner.notify.messages)
    # The signal did not cut the pre-hook short, and the post-hook ran.
    assert (tmp_path / "slept").exists()
    assert (tmp_path / "mark").exists()


def test_second_sigint_during_boot_exits_at_once(tmp_path: Path) -> None:
    runner = hooked_runner(tmp_path, "wsgiref", sleep=60)  # only a signal ends it
    try:
        runner.start(wait_ready=False)
        harness.wait_for((tmp_path / "sleepy").exists, message="pre-hook running")
        # Two signals sent at once may merge into one pending signal; sent
        # until the runner leaves, any after the first recorded one counts.
        harness.wait_for(
            lambda: _interrupt(runner) is not None, message="exit on SIGINT"
        )
        assert runner.wait() == 128 + signal.SIGINT
    finally:
        runner.stop()


def _interrupt(runner: harness.RunnerProcess) -> int | None:
    runner.signal(signal.SIGINT)
    try:
        return runner.wait(timeout=0.2)
    except subprocess.TimeoutExpired:
        return None


def test_sigterm_during_standby_exits_zero(tmp_path: Path) -> None:
    read, write = os.pipe()
    runner = harness.RunnerProcess(APP, env={"JUGGLER_STANDBY_FD": str(read)})
    try:
        _start_with_fd(runner, read)
        runner.notify.wait_for("STATUS=standby")
        runner.signal(signal.SIGTERM)
        # Nobody writes to the pipe: only the signal ends the wait.
        assert runner.wait(timeout=10) == 0
        assert "serving: " not in runner.log()
    finally:
        os.close(write)
        runner.stop()


def _start_with_fd(runner: harness.RunnerProcess, extra_fd: int) -> None:
    """RunnerProcess.start, passing one more descriptor to the child."""
    runner.sock = harness.bind_tcp()
    fd = runner.sock.fileno()
    env = {**os.environ, "NOTIFY_SOCKET": runner.notify.path, **runner.env}
    with open(runner.log_path, "ab") as log:
        runner.proc = subprocess.Popen(
            runner.command(fd),
            pass_fds=(fd, extra_fd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    os.close(extra_fd)


# -- the handover to the backend, as a unit -------------------------------------


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    """Put this process's handlers and wake-up descriptor back afterwards."""
    signums = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
    handlers = {signum: signal.getsignal(signum) for signum in signums}
    wakeup = signal.set_wakeup_fd(-1)
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(wakeup)


@pytest.mark.usefixtures("own_signal_handlers")
def test_stop_recorded_at_boot_is_passed_to_the_backends_handlers(
    tmp_path: Path,
) -> None:
    boot = StopRequest()
    boot.install()
    signal.raise_signal(signal.SIGTERM)  # before the backend took over
    assert boot.signum == signal.SIGTERM

    backend_stop = StopRequest()  # what a backend installs in serve()
    backend_stop.install()
    with socket.socket() as sock, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
        n.bind(str(tmp_path / "notify.sock"))
        n.settimeout(0.2)
        settings = serve.Settings(app=parse_spec(APP))
        notifier = Notifier(str(tmp_path / "notify.sock"))
        serve._on_ready(notifier, settings, registry.load("wsgiref"), sock, boot)
        assert backend_stop.wait(timeout=10) == signal.SIGTERM
        # A worker about to drain does not report itself ready.
        with pytest.raises(TimeoutError):
            n.recv(4096)
    boot.close()
    backend_stop.close()


# -- a parent that dies before the parent-death signal is armed -------------------

# Adopts orphans (PR_SET_CHILD_SUBREAPER), so that the runner becomes its
# child once the parent dies and its exit status can be read. It starts the
# parent (argv[1:]), relays the runner's pid, waits for the parent to be
# killed, then for the runner, and prints the runner's exit code.
PARENT = """
import subprocess, sys
fd = int(sys.argv[1])
child = subprocess.Popen(sys.argv[2:], pass_fds=(fd,))
print(child.pid, flush=True)
child.wait()
"""

REAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # CHILD_SUBREAPER
fd = int(sys.argv[1])
parent = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, pass_fds=(fd,))
runner_pid = int(parent.stdout.readline())
print(parent.pid, runner_pid, flush=True)
parent.wait()
_, status = os.waitpid(runner_pid, 0)
print(os.waitstatus_to_exitcode(status), flush=True)
"""


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        # The command name (in parentheses) may hold spaces: split after it.
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _blocked_opening_a_fifo(pid: int) -> bool:
    """Whether ``pid`` waits in open() for the reader of a FIFO."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip() == "wait_for_partner"
    except FileNotFoundError:
        return False


def _read_until_closed(fifo: Path) -> str:
    """Open the FIFO (the writer waits for this) and read until it closes."""
    chunks: list[bytes] = []
    # A writer waits already, so the open returns at once and an empty
    # read means it has closed its end.
    fd = os.open(fifo, os.O_RDONLY)
    try:
        os.set_blocking(fd, False)

        def closed() -> bool:
            if select.select([fd], [], [], 0.1)[0]:
                chunks.append(os.read(fd, 65536))
                return chunks[-1] == b""
            return False

        harness.wait_for(closed, message="the runner closes its log")
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def test_parent_dead_before_the_watch_is_armed(tmp_path: Path) -> None:
    # The runner reads its parent's pid, then opens --log-output before it
    # arms the parent-death signal. A FIFO holds it in that open() until
    # the test reads it: the parent is killed in between.
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    with harness.bind_tcp() as sock:
        fd = sock.fileno()
        runner = [
            *harness.runner_command(),
            *("serve", "--fd", str(fd), "--python-path", str(harness.APPS_DIR)),
            *("--log-output", str(fifo), APP),
        ]
        parent = [sys.executable, "-c", PARENT, str(fd), *runner]
        reaper = subprocess.Popen(
            [sys.executable, "-c", REAPER, str(fd), *parent],
            pass_fds=(fd,),
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert reaper.stdout is not None
            parent_pid, runner_pid = map(int, reaper.stdout.readline().split())
            harness.wait_for(
                lambda: _blocked_opening_a_fifo(runner_pid),
                message="runner opening its log",
            )
            os.kill(parent_pid, signal.SIGKILL)
            # The kill is done once the runner has been handed to the reaper;
            # before that, the parent-death signal could still be armed.
            harness.wait_for(
                lambda: _parent_of(runner_pid) != parent_pid,
                message="the runner re-parented",
            )
            text = _read_until_closed(fifo)  # lets the runner go on
            harness.wait_for(
                lambda: select.select([reaper.stdout], [], [], 0)[0],
                message="the runner's exit code",
            )
            assert reaper.stdout.readline().strip() == b"0"
        finally:
            harness.stop_group(reaper)
            if reaper.stdout is not None:
                reaper.stdout.close()
    assert f"parent pid={parent_pid} exited during boot; not serving" in text
    assert "serving: " not in text
