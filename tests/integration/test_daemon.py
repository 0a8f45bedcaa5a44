"""``juggler --daemon --pidfile``: detached, recorded, and cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
from harness import APPS_DIR, http_get, juggler_command, wait_for

CONFIG = f"""
[socket:web]
path = web.sock

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {APPS_DIR} hello:app
numprocesses = 1
copy_env = true
stdout_stream.class = FileStream
stdout_stream.filename = web.log
"""


def test_daemon_keeps_the_working_directory_and_its_pidfile(tmp_path: Path):
    (tmp_path / "juggler.ini").write_text(CONFIG)
    env = {**os.environ, "JUGGLER_ENDPOINT": f"unix://{tmp_path}/control.sock"}
    env["PATH"] = f"{Path(juggler_command()[0]).parent}:{env['PATH']}"
    done = subprocess.run(
        [*juggler_command(), "--daemon", "--pidfile", "juggler.pid", "juggler.ini"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pidfile = tmp_path / "juggler.pid"
    wait_for(pidfile.exists, message="the pidfile, relative to where juggler ran")
    daemon = psutil.Process(int(pidfile.read_text()))
    try:
        # Detached: in a new session, of which it is not the leader (so it
        # can never acquire a terminal); same directory, so the config's
        # relative socket path lands where it did.
        assert os.getsid(daemon.pid) not in (os.getsid(0), daemon.pid)
        assert daemon.terminal() is None
        assert daemon.cwd() == str(tmp_path)
        wait_for((tmp_path / "web.sock").exists, message="the socket bound")
        wait_for(lambda: _answers(str(tmp_path / "web.sock")), message="serving")
        assert (tmp_path / "web.log").exists()
    finally:
        workers = daemon.children(recursive=True)
        daemon.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs([daemon, *workers], timeout=20)
        for process in alive:
            process.kill()
    assert not alive
    assert not pidfile.exists() and not (tmp_path / "web.sock").exists()


def _answers(path: str) -> bool:
    try:
        return http_get(path)[0] == 200
    except OSError:
        return False
