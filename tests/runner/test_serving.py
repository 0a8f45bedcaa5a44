"""The runner around the app: environment, readiness, access log, hooks,
and exiting with its parent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
import psutil
import pytest

from runner.support import get, getenv, stop_and_wait

APP = "conformance_wsgi:app"


def test_env_reaches_the_app_and_notify_socket_does_not() -> None:
    args = ["--env", "JUGGLER_GREETING=a=b c", "--env", "JUGGLER_EMPTY="]
    with harness.running(APP, extra_args=args) as runner:
        assert getenv(runner, "JUGGLER_GREETING") == "a=b c"
        assert getenv(runner, "JUGGLER_EMPTY") == ""
        # The runner keeps the notify socket to itself: the app's children
        # must not report readiness in its name.
        assert getenv(runner, "NOTIFY_SOCKET") is None


def test_ready_and_stopping_reach_the_notify_socket() -> None:
    with harness.running(APP) as runner:
        ready = next(m for m in runner.notify.messages if "READY=1" in m)
        assert f"MAINPID={runner.proc.pid}" in ready.splitlines()  # type: ignore[union-attr]

        runner.signal(signal.SIGTERM)
        runner.notify.wait_for("STOPPING=1")
        assert runner.wait() == 0


def test_access_log_writes_one_escaped_line_per_request() -> None:
    with harness.running(APP, extra_args=["--access-log"]) as runner:
        assert get(runner, "/hello?x=1")[0] == 200
        # Quotes and backslashes are legal in a header and could forge fields;
        # control characters are refused by the server before the app.
        _request_with_agent(runner, b'evil" 200 \\ "x')
        assert stop_and_wait(runner) == 0
        lines = [line for line in runner.log().splitlines() if "juggler.access" in line]

    assert len(lines) == 2, lines
    assert '"GET /hello?x=1 HTTP/1.1" 200 13 ' in lines[0]
    assert str(runner.proc.pid) in lines[0]  # type: ignore[union-attr]
    assert re.search(r'"GET /agent HTTP/1.1" 404 13 [\d.]+s ', lines[1])
    assert lines[1].endswith('"evil\\" 200 \\\\ \\"x"')


def test_no_access_log_without_the_option() -> None:
    with harness.running(APP) as runner:
        assert get(runner, "/hello?unlogged=1")[0] == 200
        _request_with_agent(runner, b"unlogged-agent")
        assert stop_and_wait(runner) == 0
        log = runner.log()

    assert "juggler.access" not in log
    assert "unlogged" not in log


def _request_with_agent(runner: harness.RunnerProcess, agent: bytes) -> None:
    with runner.connect() as sock:
        sock.sendall(
            b"GET /agent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"User-Agent: " + agent + b"\r\n\r\n"
        )
        answer = b"".join(iter(lambda: sock.recv(4096), b""))
    assert answer.startswith(b"HTTP/1.1 404"), answer


def test_pre_and_post_hooks_run(tmp_path: Path) -> None:
    args = [
        "--env",
        f"CONFORMANCE_MARKERS={tmp_path}",
        "--pre-hook",
        "conformance_wsgi:pre_hook",
        "--post-hook",
        "conformance_wsgi:post_hook",
    ]
    with harness.running(APP, extra_args=args) as runner:
        pid = str(runner.proc.pid)  # type: ignore[union-attr]
        assert (tmp_path / "pre_hook").read_text() == pid
        assert not (tmp_path / "post_hook").exists()

        assert stop_and_wait(runner) == 0
        assert (tmp_path / "post_hook").read_text() == pid


# -- parent death -------------------------------------------------------------

# A parent in the shape of a supervisor: spawns the runner, says its pid,
# then waits on it until it is killed itself.
PARENT = """
import subprocess, sys
fd = int(sys.argv[1])
child = subprocess.Popen(sys.argv[2:], pass_fds=(fd,), stdout=subprocess.DEVNULL)
print(child.pid, flush=True)
child.wait()
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("mode", [[], ["--reload"]], ids=["serve", "reload"])
def test_runner_exits_when_its_parent_is_killed(mode: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp, harness.bind_tcp() as sock:
        notify = harness.NotifyListener(tmp)
        fd = sock.fileno()
        command = [
            *harness.runner_command(),
            *("serve", "--fd", str(fd), "--python-path", str(harness.APPS_DIR)),
            *mode,
            APP,
        ]
        env = {**os.environ, "NOTIFY_SOCKET": notify.path}
        with open(os.path.join(tmp, "runner.log"), "wb") as log:
            parent = subprocess.Popen(
                [sys.executable, "-c", PARENT, str(fd), *command],
                pass_fds=(fd,),
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        pids: list[int] = []
        try:
            assert parent.stdout is not None
            pids.append(int(parent.stdout.readline()))
            notify.wait_for("READY=1")
            # With --reload the runner is a reloading parent; the worker that
            # serves is its child, and must not outlive it either.
            pids += [p.pid for p in psutil.Process(pids[0]).children()]
            assert len(pids) == 1 + bool(mode), pids

            os.kill(parent.pid, signal.SIGKILL)
            parent.wait(harness.DEFAULT_DEADLINE)
            for pid in pids:
                harness.wait_for(
                    lambda pid=pid: not _alive(pid), message=f"pid {pid} exits"
                )
        finally:
            for pid in pids:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            harness.stop_group(parent)
            if parent.stdout is not None:
                parent.stdout.close()
            notify.close()
        # PR_SET_PDEATHSIG sent SIGTERM: a graceful stop, not a kill.
        log_text = Path(tmp, "runner.log").read_text()
        serving_pid = pids[-1]
        assert f"[{serving_pid}] INFO juggler.runner: draining: " in log_text, log_text
