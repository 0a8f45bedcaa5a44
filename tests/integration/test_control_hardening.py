"""The control channel under clients that misbehave, and a clean shutdown."""

from __future__ import annotations

import json
import socket
import subprocess

from control_support import ask, control_path
from harness import juggler_command

CONFIG = """
[watcher:sl]
cmd = sleep 1000
ready = none
numprocesses = 2

[watcher:one]
cmd = sleep 1000
ready = none
singleton = true
"""


def test_shutdown_with_an_events_subscriber_logs_no_error(juggler):
    sup = juggler(CONFIG, extra_args=["--log-level", "debug"])
    sup.wait_log("ready: sl[", count=2)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.connect(control_path(sup))
    raw.sendall(b'{"id": 1, "command": "events"}\n')
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cli = subprocess.Popen(
        [*juggler_command(), "--endpoint", sup.endpoint, "events"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        sup.wait_log("control: events subscriber added", count=2)
        # A request in flight when the daemon stops, on its own connection.
        busy.connect(control_path(sup))
        busy.sendall(b'{"command": "stop", "args": {"name": "sl"}}\n')
        assert sup.ctl_json("quit") == "stopping"
        assert sup.wait(timeout=20) == 0
        assert cli.wait(timeout=10) == 1  # told, in one line, that juggler left
    finally:
        raw.close()
        busy.close()
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    log = sup.log()
    assert "stopped: pid=" in log
    assert "Traceback" not in log and " ERROR " not in log, log
    assert "never retrieved" not in log


def test_get_checks_the_type_of_its_keys(juggler):
    sup = juggler(CONFIG)
    path = control_path(sup)
    for keys in (5, "numprocesses", [1], None):
        reply = ask(path, "get", name="sl", keys=keys)
        assert reply == {
            "id": None,
            "ok": False,
            "error": "get needs a list of option names (keys)",
        }
    assert ask(path, "get", name="sl", keys=["numprocesses"])["result"] == {
        "numprocesses": 2
    }


def test_set_respects_singleton(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: one[1]")
    done = sup.ctl("set", "one", "numprocesses", "2")
    assert done.returncode == 1
    assert done.stderr == "error: one is a singleton: numprocesses must be 0 or 1\n"
    done = sup.ctl("set", "sl", "singleton", "true")
    assert done.stderr == "error: sl is a singleton: numprocesses must be 0 or 1\n"
    assert sup.ctl_json("numprocesses", "one") == 1
    assert len(sup.serving("one")) == 1 and len(sup.serving("sl")) == 2
    # What a singleton may do, it does.
    assert sup.ctl_json("set", "one", "numprocesses", "0")["changed"] == [
        "numprocesses"
    ]
    assert sup.ctl_json("numprocesses", "one") == 0
    assert json.loads(sup.ctl("--json", "get", "one", "singleton").stdout) == {
        "singleton": True
    }
