"""The supervisor end to end: real juggler, real runner workers, real HTTP."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from harness import SupervisorProcess, http_get, wait_for

WEB = """
[circus]
loglevel = debug

[socket:web]
path = {tmp}/web.sock

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {apps} hello:app
numprocesses = %(n)d
copy_env = true
graceful_timeout = 5
"""


@pytest.fixture
def supervisor():
    started: list[SupervisorProcess] = []

    def start(config: str, **kwargs: object) -> SupervisorProcess:
        sup = SupervisorProcess(config)
        started.append(sup)
        sup.start(**kwargs)  # type: ignore[arg-type]
        return sup

    yield start
    for sup in started:
        sup.stop()


def web_config(n: int = 3) -> str:
    return WEB % {"n": n}


def serving_pids(sup: SupervisorProcess) -> list[int]:
    return sup.serving()


def test_workers_serve_the_socket_the_supervisor_bound(supervisor):
    sup = supervisor(web_config(3))
    sup.wait_log("ready: web[", count=3)
    status, body = http_get(f"{sup.tmp}/web.sock", "/")
    assert (status, body) == (200, b"Hello, world!")
    children = serving_pids(sup)
    assert len(children) == 3
    for pid in children:
        cmdline = psutil.Process(pid).cmdline()
        assert "runner" in cmdline[1] or cmdline[0].endswith("runner")
    # Lifecycle lines name the watcher, the slot and the pid.
    for pid in children:
        assert "spawned: web[" in sup.log() and f"pid={pid}" in sup.log()


def test_killed_worker_is_replaced_and_serves(supervisor):
    sup = supervisor(web_config(2))
    sup.wait_log("ready: web[", count=2)
    victim = serving_pids(sup)[0]
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(serving_pids(sup)) == 2 and victim not in serving_pids(sup),
        message="a replacement worker",
    )
    sup.wait_log("ready: web[", count=3)
    elapsed = time.monotonic() - started
    print(f"replacement ready {elapsed * 1000:.0f} ms after SIGKILL")
    assert http_get(f"{sup.tmp}/web.sock")[0] == 200
    assert f"pid={victim} signal=SIGKILL (unexpected" in sup.log()


def test_flapping_watcher_is_stopped_and_others_keep_serving(supervisor):
    sup = supervisor(
        web_config(1)
        + """
[watcher:crasher]
cmd = {python} -c "import sys; sys.exit(1)"
ready = none
flapping.active = true
flapping.retry_in = 60
"""
    )
    sup.wait_log("flapping: crasher")
    log = sup.log()
    assert "exited: crasher[" in log and "status=1 (unexpected)" in log
    assert http_get(f"{sup.tmp}/web.sock")[0] == 200
    # While it rests, the crasher is not respawned.
    assert sup.log().count("spawned: crasher[") == 2  # attempts = 2


def test_app_that_fails_to_load_is_not_respawned_in_a_loop(supervisor):
    sup = supervisor(
        """
[socket:web]
path = {tmp}/web.sock

[watcher:broken]
cmd = runner serve --fd $(circus.sockets.web) --python-path {apps} broken_syntax:app
copy_env = true
flapping.retry_in = 2
""",
        wait=None,
    )
    sup.wait_log("exited with app failed to load; retrying in 2s")
    first = time.monotonic()
    assert "exited: broken[1]" in sup.log() and "status=4" in sup.log()
    sup.wait_log("spawned: broken[", count=2, timeout=10)
    # The second attempt waited for retry_in instead of looping at once.
    assert time.monotonic() - first > 1.5


def test_sigterm_stops_everything_and_kills_a_stubborn_process(supervisor):
    sup = supervisor(
        web_config(2)
        + """
[watcher:stubborn]
cmd = {python} {apps}/stubborn.py
graceful_timeout = 1
ready = none
"""
    )
    sup.wait_log("ready: web[", count=2)
    sup.wait_log("ready: stubborn[")
    children = sup.children()
    sup.signal(signal.SIGTERM)
    assert sup.wait(timeout=15) == 0
    log = sup.log()
    assert "killed: stubborn[1]" in log and "after graceful_timeout=1s" in log
    assert "exited: web[1]" in log and "(stopped)" in log
    for pid in children:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert not os.path.exists(f"{sup.tmp}/web.sock")


def test_supervisor_sigkill_leaves_no_orphans(supervisor):
    sup = supervisor(web_config(3))
    sup.wait_log("(spare, waiting)")
    children = sup.children()  # the spare too
    assert len(children) == 4
    sup.signal(signal.SIGKILL)
    sup.wait()
    wait_for(
        lambda: not any(psutil.pid_exists(pid) for pid in children),
        timeout=10,
        message="workers gone after the supervisor's death",
    )


def test_sighup_applies_a_changed_config_and_rejects_a_broken_one(supervisor):
    sup = supervisor(web_config(2))
    sup.wait_log("ready: web[", count=2)
    before = set(serving_pids(sup))

    # numprocesses alone: resized in place, the running processes stay.
    sup.write_config(web_config(3))
    sup.signal(signal.SIGHUP)
    sup.wait_log("reload: resizing watcher web numprocesses 2 -> 3")
    wait_for(lambda: len(serving_pids(sup)) == 3)
    assert before <= set(serving_pids(sup))

    # Any other change: a new copy of the watcher replaces every process.
    resized = set(serving_pids(sup))
    sup.write_config(
        web_config(3).replace("graceful_timeout = 5", "graceful_timeout = 4")
    )
    sup.signal(signal.SIGHUP)
    sup.wait_log("reload: replacing watcher web")
    wait_for(
        lambda: len(serving_pids(sup)) == 3 and not resized & set(serving_pids(sup))
    )
    assert http_get(f"{sup.tmp}/web.sock")[0] == 200

    serving = set(serving_pids(sup))
    sup.write_config(web_config(3) + "\n[watcher:bad]\nnumprocesses = x\n")
    sup.signal(signal.SIGHUP)
    sup.wait_log("reload rejected:")
    assert set(serving_pids(sup)) == serving
    assert http_get(f"{sup.tmp}/web.sock")[0] == 200


def test_config_error_exits_2_before_binding(tmp_path):
    bad = tmp_path / "bad.ini"
    sock = tmp_path / "web.sock"
    bad.write_text(f"[socket:web]\npath = {sock}\n\n[watcher:web]\nnumprocesses = 2\n")
    sup = SupervisorProcess(bad.read_text())
    try:
        sup.start(wait=None)
        assert sup.wait(timeout=10) == 2
        assert "[watcher:web]" in sup.log() and "cmd" in sup.log()
        assert not sock.exists()
    finally:
        sup.stop()
