"""``--reload``: a source change restarts the worker; the socket stays."""

from __future__ import annotations

import os
import time
from pathlib import Path

import harness


def write_app(folder: Path, body: str) -> None:
    path = folder / "reloadable.py"
    path.write_text(
        "def app(environ, start_response):\n"
        f"    body = {body!r}.encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    # A new mtime even within the same second as the previous write.
    future = time.time() + 2 + len(body)
    os.utime(path, (future, future))


def answer(runner: harness.RunnerProcess) -> bytes | None:
    try:
        status, body = harness.http_get(runner.address, "/")  # type: ignore[arg-type]
    except OSError:
        return None
    return body if status == 200 else None


def test_a_change_is_served_without_refusing_connections(tmp_path: Path) -> None:
    write_app(tmp_path, "one")
    args = ["--reload", "--python-path", str(tmp_path)]
    with harness.running("reloadable:app", extra_args=args) as runner:
        assert answer(runner) == b"one"
        write_app(tmp_path, "two")
        harness.wait_for(lambda: answer(runner) == b"two", message="new code served")
        assert "reloader: " in runner.log() and "reloadable.py changed" in runner.log()

        # A broken save: the worker cannot boot; the next good save recovers.
        (tmp_path / "reloadable.py").write_text("def app(:\n")
        future = time.time() + 10
        os.utime(tmp_path / "reloadable.py", (future, future))
        harness.wait_for(lambda: "SyntaxError" in runner.log(), message="broken save")
        write_app(tmp_path, "three!")
        harness.wait_for(lambda: answer(runner) == b"three!", message="recovered")

        runner.signal(15)
        assert runner.wait() == 0
