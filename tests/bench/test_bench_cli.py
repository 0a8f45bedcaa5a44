"""The bench's own processes: the refusal without wrk, and the limit parent."""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from harness import wait_for

from bench import probe

REPO = Path(__file__).resolve().parents[2]


def test_refuses_to_run_without_wrk_in_one_line():
    # nginx is still found in /usr/sbin; wrk is looked up on PATH only.
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", tempfile.mkdtemp()],
        cwd=REPO,
        env={**os.environ, "PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "wrk" in lines[0]


def test_limit_parent_serves_with_n_workers_and_stops_on_sigterm(tmp_path):
    runner = Path(sys.executable).with_name("runner")
    path = str(tmp_path / "web.sock")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.parent",
            "2",
            f"unix:{path}",
            str(runner),
            "serve",
            "--fd",
            "{fd}",
            "--backend",
            "wsgiref",
            "--python-path",
            str(REPO),
            "bench.apps:wsgi",
        ],
        cwd=REPO,
        start_new_session=True,
    )
    try:
        wait_for(lambda: os.path.exists(path) and probe.answers(path))
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        assert probe.get(path)[1] in {w.pid for w in workers}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
