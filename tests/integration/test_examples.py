"""The repository's example configs run as they are written."""

from __future__ import annotations

import os
import shutil

import pytest
from harness import REPO_DIR, SupervisorProcess, http_get, wait_for

EXAMPLES = REPO_DIR / "examples"


def tcp_to_unix(config: str) -> str:
    """The examples listen on port 8000; tests use a private UNIX path."""
    return (
        config.replace("host = 127.0.0.1\nport = 8000", "path = {tmp}/web.sock")
        .replace("{", "{{")
        .replace("}", "}}")
        .replace("{{tmp}}", "{tmp}")
    )


@pytest.fixture
def example():
    started: list[SupervisorProcess] = []

    def start(name: str, env: dict[str, str] | None = None) -> SupervisorProcess:
        config = tcp_to_unix((EXAMPLES / name).read_text())
        sup = SupervisorProcess(config, env=env)
        sup.cwd = str(REPO_DIR)
        started.append(sup)
        sup.start()
        return sup

    yield start
    for sup in started:
        sup.stop()


def test_demo_serves_with_several_workers(example):
    sup = example("demo.ini")
    sup.wait_log("ready: web[", count=4)
    pids = set()
    for _ in range(20):
        status, body = http_get(f"{sup.tmp}/web.sock")
        assert status == 200 and body.startswith(b"Hello from juggler worker pid")
        pids.add(int(body.split()[-1]))
    children = sup.serving()
    assert len(children) == 4
    # Every answer came from one of the supervisor's own workers.
    assert pids <= set(children)


def test_stack_runs_redis_web_and_consumer_as_watchers(example, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run .ci/sysdeps")
    sup = example("stack.ini", env={"STACK_DIR": str(tmp_path)})
    sup.wait_log("ready: redis[1]")
    sup.wait_log("ready: web[", count=2)
    # Redis started first (priority 10) and answered its READY=1.
    log = sup.log()
    assert log.index("ready: redis[1]") < log.index("spawned: web[")
    web = f"{sup.tmp}/web.sock"
    assert http_get(web, "/ping") == (200, b"PONG")
    assert http_get(web, "/jobs/hello")[0] == 202
    wait_for(lambda: http_get(web, "/results/hello") == (200, b"HELLO"))
    assert os.path.exists(tmp_path / "redis.sock")
