"""juggler behind a real nginx: reloads and crashes drop no request."""

from __future__ import annotations

import os
import signal

import pytest
from harness import SupervisorProcess, wait_for
from proxy import Load, Nginx

CONFIG = """
[socket:web]
path = {tmp}/web.sock

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --backend %(backend)s
args = --python-path {apps} %(app)s
numprocesses = 2
copy_env = true
graceful_timeout = 10
"""


@pytest.fixture
def stack():
    started: list[object] = []

    def start(
        backend: str = "wsgiref", app: str = "hello:app"
    ) -> tuple[SupervisorProcess, Nginx]:
        sup = SupervisorProcess(CONFIG % {"backend": backend, "app": app})
        started.append(sup)
        sup.start()
        sup.wait_log("ready: web[", count=2)
        nginx = Nginx(f"unix:{sup.tmp}/web.sock")
        started.append(nginx)
        nginx.start()
        return sup, nginx

    yield start
    for item in reversed(started):
        item.stop()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("backend", "app"),
    [
        ("wsgiref", "hello:app"),
        ("gevent", "hello:app"),
        ("meinheld", "hello:app"),
        ("waitress", "hello:app"),
        ("uvicorn", "hello_asgi:app"),
        ("hypercorn", "hello_asgi:app"),
    ],
)
def test_rolling_restarts_under_load_fail_no_request(stack, backend, app):
    sup, nginx = stack(backend, app)
    with Load(nginx.port) as load:
        wait_for(lambda: load.result.total > 200, message="load flowing")
        for _ in range(3):
            before = set(sup.serving())
            done = sup.ctl("restart", "web")
            assert done.returncode == 0, done.stderr
            assert not before & set(sup.serving())
        wait_for(lambda: load.result.total > 400)
    result = load.result
    print(
        f"{backend}: {result.total} requests across 3 rolling restarts, "
        f"failed {result.failed}: {dict(result.statuses)} {dict(result.errors)}"
    )
    assert result.failed == 0, (
        dict(result.statuses),
        dict(result.errors),
        nginx.errors(),
    )


def test_killed_worker_costs_at_most_its_in_flight_requests(stack):
    sup, nginx = stack()
    with Load(nginx.port, clients=4) as load:
        wait_for(lambda: load.result.total > 100, message="load flowing")
        victim = sup.serving()[0]
        os.kill(victim, signal.SIGKILL)
        sup.wait_log(f"pid={victim} signal=SIGKILL")
        wait_for(lambda: len(sup.serving()) == 2 and victim not in sup.serving())
        served_before = load.result.total
        wait_for(lambda: load.result.total > served_before + 100)
    result = load.result
    print(f"kill under load: {result.total} requests, failed {result.failed}")
    # At most the requests the dead worker had in flight (one per client).
    assert result.failed <= 4, (dict(result.statuses), dict(result.errors))
