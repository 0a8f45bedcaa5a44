"""Spare processes: booted runners that replace a dead worker at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from harness import (
    APPS_DIR,
    NotifyListener,
    SupervisorProcess,
    bind_tcp,
    http_get,
    runner_command,
    wait_for,
)

WEB = """
[socket:web]
path = {tmp}/web.sock

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {tmp} --python-path {apps}
args = replaceable:app
numprocesses = 2
copy_env = true
%s
"""


@pytest.fixture
def supervisor():
    started: list[SupervisorProcess] = []

    def start(extra: str = "") -> SupervisorProcess:
        sup = SupervisorProcess(WEB % extra)
        shutil.copy(
            APPS_DIR / "replaceable.py", os.path.join(sup.tmp, "replaceable.py")
        )
        started.append(sup)
        sup.start()
        sup.wait_log(
            "(spare, waiting)" if "spare_processes = 0" not in extra else "started:"
        )
        return sup

    yield start
    for sup in started:
        sup.stop()


def spare_pids(sup: SupervisorProcess) -> list[int]:
    return [
        p["pid"]
        for p in sup.status()["web"]["processes"]  # type: ignore[index]
        if p["spare"]
    ]


def test_a_killed_worker_is_replaced_by_the_spare(supervisor):
    sup = supervisor()
    [spare] = spare_pids(sup)
    victim = sup.serving()[0]
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: spare in sup.serving(), interval=0.001)
    elapsed = time.monotonic() - started
    assert "promoted: web[" in sup.log() and f"pid={spare} from spare" in sup.log()
    print(f"spare serving {elapsed * 1000:.1f} ms after SIGKILL")
    assert http_get(f"{sup.tmp}/web.sock")[0] == 200
    # A new spare is booted in the background.
    wait_for(lambda: spare_pids(sup) and spare_pids(sup)[0] != spare)
    assert sorted(sup.serving()) == sorted({*sup.serving()} - {victim})


def test_incr_promotes_the_spare_first(supervisor):
    sup = supervisor()
    [spare] = spare_pids(sup)
    assert sup.ctl_json("incr", "web") == 3
    assert spare in sup.serving()


def test_a_spare_that_cannot_boot_never_stops_the_watcher(supervisor):
    sup = supervisor("flapping.retry_in = 60")
    serving = sup.serving()
    with open(os.path.join(sup.tmp, "replaceable.py"), "w") as f:
        f.write("raise RuntimeError('broken on purpose')\n")
    [spare] = spare_pids(sup)
    os.kill(spare, signal.SIGKILL)  # its successor boots the broken code
    sup.wait_log(f"pid={spare} signal=SIGKILL (spare; replacing it)")
    sup.wait_log("(spare failed to boot; next one in 60s)")
    assert sup.serving() == serving
    assert "flapping" not in sup.log()
    assert http_get(f"{sup.tmp}/web.sock")[0] == 200


def test_no_spare_when_spare_processes_is_0(supervisor):
    sup = supervisor("spare_processes = 0")
    sup.wait_log("ready: web[", count=2)
    assert spare_pids(sup) == [] and len(sup.children()) == 2


@pytest.mark.parametrize("word", [b"", b"\1"])
def test_runner_standby_waits_then_serves_or_leaves(tmp_path, word):
    listener = bind_tcp()
    notify = NotifyListener(str(tmp_path))
    read, write = os.pipe()
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify.path,
        "JUGGLER_STANDBY_FD": str(read),
    }
    with (tmp_path / "stderr").open("wb") as stderr_file:
        proc = subprocess.Popen(
            [
                *runner_command(),
                "serve",
                "--fd",
                str(listener.fileno()),
                "--python-path",
                str(APPS_DIR),
                "hello:app",
            ],
            pass_fds=(listener.fileno(), read),
            env=env,
            stderr=stderr_file,
            start_new_session=True,
        )
    os.close(read)
    try:
        notify.wait_for("STATUS=standby")
        assert not any("READY=1" in m and "standby" not in m for m in notify.messages)
        os.write(write, word)
        os.close(write)
        if word:
            notify.messages.clear()
            notify.wait_for("READY=1")  # now serving
            host, port = listener.getsockname()
            assert http_get((host, port)) == (200, b"Hello, world!")
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        stderr = (tmp_path / "stderr").read_text()
        assert ("serving:" in stderr) == bool(word)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        listener.close()
