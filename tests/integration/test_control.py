"""The control channel and the operator CLI against a real juggler."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import stat
import subprocess
import time

import pytest
from control_support import control_path, free_port, raw_exchange
from harness import (
    APPS_DIR,
    SupervisorProcess,
    http_get,
    juggler_command,
    runner_command,
    wait_for,
)

CONFIG = """
[socket:web]
path = {tmp}/web.sock

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {apps} hello:app
numprocesses = 2
copy_env = true
"""

STUBBORN = """
[watcher:stubborn]
cmd = {python} {apps}/stubborn.py
graceful_timeout = 10
ready = none
"""


def test_status_list_and_counts(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[", count=2)
    status = sup.ctl_json("status")
    assert status["web"]["state"] == "running"
    processes = status["web"]["processes"]
    assert [p["spare"] for p in processes].count(False) == 2
    assert [p["spare"] for p in processes].count(True) <= 1  # booting or ready
    assert sup.ctl_json("list") == ["web"]
    # list names every process, the booted spare included.
    assert sorted(sup.ctl_json("list", "web")) == sorted(sup.children())
    assert sup.ctl_json("numprocesses") == 2
    assert sup.ctl_json("numwatchers") == 1
    human = sup.ctl("status", "web")
    assert human.returncode == 0 and "web: running (2/2 processes" in human.stdout
    sockets = sup.ctl_json("listsockets")
    assert sockets[0]["name"] == "web" and sockets[0]["location"].endswith("web.sock")


def test_incr_decr_wait_for_ready_processes(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[", count=2)
    assert sup.ctl_json("incr", "web", "2") == 4
    # incr returns once the new processes are ready.
    assert all(p["ready"] for p in sup.ctl_json("status", "web")["processes"])
    assert len(sup.serving()) == 4
    assert sup.ctl_json("decr", "web", "3") == 1
    wait_for(lambda: len(sup.serving()) == 1)
    assert http_get(f"{sup.tmp}/web.sock")[0] == 200


def test_rolling_restart_replaces_every_process(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[", count=2)
    before = set(sup.serving())
    sup.ctl_json("restart", "web")
    after = set(sup.serving())
    assert len(after) == 2 and not before & after
    sup.ctl_json("reload")
    again = set(sup.serving())
    assert len(again) == 2 and not after & again


def test_signal_and_stats(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[", count=2)
    victim = sup.serving()[0]
    assert sup.ctl_json("signal", "web", str(victim), "KILL") == 1
    sup.wait_log(f"pid={victim} signal=SIGKILL")
    stats = sup.ctl_json("stats", "web")
    assert {row["watcher"] for row in stats} == {"web"}
    assert all(row["rss"] > 0 and row["open_files"] > 0 for row in stats)
    bad = sup.ctl("signal", "web", "NOSUCH")
    assert (
        bad.returncode == 1 and bad.stderr.strip() == "error: unknown signal 'NOSUCH'"
    )


def test_errors_are_one_line_and_non_zero(juggler):
    sup = juggler(CONFIG)
    done = sup.ctl("status", "nope")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: no watcher named 'nope' (watchers: web)"
    unreachable = SupervisorProcess(CONFIG)
    try:
        done = unreachable.ctl("status")
        assert done.returncode == 1 and "cannot reach juggler" in done.stderr
    finally:
        unreachable.stop()


def test_reloadconfig_applies_or_rejects_whole(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[", count=2)
    sup.write_config(CONFIG.replace("numprocesses = 2", "numprocesses = 3"))
    assert sup.ctl_json("reloadconfig") == ["web"]
    assert len(sup.serving("web")) == 3
    serving = set(sup.serving())
    sup.write_config(CONFIG + "\n[watcher:broken]\nnumprocesses = many\n")
    done = sup.ctl("reloadconfig")
    assert done.returncode == 1
    assert "[watcher:broken]" in done.stderr and done.stderr.count("\n") == 1
    assert set(sup.serving()) == serving


def test_quit_stops_everything(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[", count=2)
    assert sup.ctl_json("quit") == "stopping"
    assert sup.wait(timeout=15) == 0
    assert not os.path.exists(control_path(sup))


def test_socket_and_directory_are_private(juggler):
    sup = juggler(CONFIG)
    mode = stat.S_IMODE(os.stat(control_path(sup)).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(control_path(sup))).st_mode) == 0o700


def exchange_as(uid: int, path: str, payload: bytes) -> bytes:
    """``raw_exchange`` from a child that has become ``uid``; b"<closed>"
    when the server hung up without a reply."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            os.setgid(uid)
            os.setuid(uid)
            try:
                answer = raw_exchange(path, payload)
            except (ConnectionResetError, BrokenPipeError):
                answer = b""  # refused: closed without a reply
            except OSError as exc:
                answer = repr(exc).encode()
            os.write(write, answer or b"<closed>")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as f:
        return f.read()


NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="needs root to become another uid"
)


@needs_root
def test_peer_of_another_uid_is_refused(juggler):
    sup = juggler(CONFIG)
    path = control_path(sup)
    os.chmod(os.path.dirname(path), 0o755)  # let the stranger reach the file
    os.chmod(path, 0o666)
    assert exchange_as(NOBODY, path, b'{"command": "quit"}\n') == b"<closed>"
    assert "control: refused" in sup.log() and f"uid={NOBODY}" in sup.log()
    assert sup.proc is not None and sup.proc.poll() is None  # quit did not run


@needs_root
@pytest.mark.parametrize(
    ("users", "uids"), [("65534", [NOBODY]), ("root, nobody", [0, NOBODY])]
)
def test_a_peer_in_allowed_users_gets_answers(juggler, users, uids):
    sup = juggler(f"[circus]\nallowed_users = {users}\n" + CONFIG)
    assert sup.ctl_json("globaloptions")["allowed_users"] == uids
    path = control_path(sup)
    # The socket opens to all, the directory to search; the peer check
    # is what keeps strangers out.
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o711
    answer = exchange_as(NOBODY, path, b'{"command": "numwatchers"}\n')
    assert json.loads(answer) == {"id": None, "ok": True, "result": 1}
    # Another stranger is still refused.
    assert exchange_as(NOBODY - 1, path, b'{"command": "quit"}\n') == b"<closed>"
    assert f"uid={NOBODY - 1} (not allowed)" in sup.log()


@needs_root
def test_endpoint_owner_gets_the_socket_file_and_answers(juggler):
    sup = juggler("[circus]\nendpoint_owner = nobody\n" + CONFIG)
    path = control_path(sup)
    info = os.stat(path)
    assert info.st_uid == NOBODY and stat.S_IMODE(info.st_mode) == 0o600
    # Its directory lets the owner pass, and no one list or create files.
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o711
    answer = exchange_as(NOBODY, path, b'{"command": "numwatchers"}\n')
    assert json.loads(answer)["result"] == 1
    # Root's own CLI still works; another uid cannot open the file at all.
    assert sup.ctl_json("numwatchers") == 1
    refused = exchange_as(NOBODY - 1, path, b'{"command": "quit"}\n')
    assert refused == repr(PermissionError(13, "Permission denied")).encode()
    assert sup.proc is not None and sup.proc.poll() is None


def test_malformed_and_oversized_frames_get_errors(juggler):
    sup = juggler(CONFIG)
    path = control_path(sup)
    replies = [
        json.loads(line)
        for line in raw_exchange(
            path,
            b'not json\n{"args": 1}\n[1, 2]\n{"command": "nope"}\n'
            + b'{"command": "status", "args": "x"}\n'
            + b"[" * 100_000
            + b"\n",
        ).splitlines()
    ]
    errors = [r["error"] for r in replies]
    assert errors[0] == "malformed frame: not JSON"
    assert errors[1].startswith("malformed request")
    assert errors[2].startswith("malformed request")
    assert errors[3].startswith("unknown command 'nope'")
    assert errors[4] == "malformed request: args must be an object"
    assert errors[5] == "frame too large"
    # The arbiter is undisturbed.
    assert sup.ctl_json("numwatchers") == 1


def test_a_slow_stop_does_not_freeze_other_commands(juggler):
    sup = juggler(CONFIG + STUBBORN)
    sup.wait_log("ready: web[", count=2)
    sup.wait_log("ready: stubborn[1]")
    stopping = concurrent.futures.ThreadPoolExecutor(1).submit(
        sup.ctl, "stop", "stubborn"
    )
    sup.wait_log("stopping: stubborn[1]")
    wait_for(lambda: sup.ctl_json("status", "stubborn")["state"] == "stopping")

    def timed_status() -> float:
        started = time.monotonic()
        reply = raw_exchange(control_path(sup), b'{"command": "status"}\n')
        assert json.loads(reply)["result"]["web"]["state"] == "running"
        return time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        durations = list(pool.map(lambda _: timed_status(), range(50)))
    assert not stopping.done()  # the stop still waits for its graceful_timeout
    print(f"50 concurrent status during a stop: max {max(durations) * 1000:.0f} ms")

    # A change queued behind that stop waits for it; changes to the other
    # watchers, and adding or removing one, do not.
    queued = concurrent.futures.ThreadPoolExecutor(1).submit(
        sup.ctl, "set", "stubborn", "graceful_timeout", "3"
    )
    for command in (
        ("set", "web", "numprocesses", "3"),
        ("add", "extra", "sleep 60"),
        ("rm", "extra"),
    ):
        done = sup.ctl(*command)
        assert done.returncode == 0, (command, done.stderr)
    assert not stopping.done() and not queued.done()
    assert queued.result(timeout=30).returncode == 0
    # The web watcher is still managed: a killed worker is replaced.
    victim = sup.serving("web")[0]
    os.kill(victim, 9)
    wait_for(lambda: victim not in sup.serving("web") and len(sup.serving("web")) == 3)
    assert stopping.result(timeout=30).returncode == 0


def test_event_stream_delivers_spawn_and_exit(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[", count=2)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(control_path(sup))
        reader = client.makefile("rb")
        client.sendall(b'{"id": 7, "command": "events"}\n')
        assert json.loads(reader.readline()) == {"id": 7, "ok": True}
        victim = sup.serving()[0]
        os.kill(victim, 9)
        topics = []
        while not ({"exit", "spawn", "ready"} <= set(topics)):
            event = json.loads(reader.readline())["event"]
            topics.append(event["topic"])
            if event["topic"] == "exit":
                assert event["pid"] == victim and event["expected"] is False


def test_tcp_endpoint_requires_the_token(juggler, tmp_path):
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-some-length\n")
    token_file.chmod(0o600)
    sup = juggler(
        f"[circus]\nendpoint = tcp://127.0.0.1:{port}\ntoken_file = {token_file}\n"
        + CONFIG
    )
    sup.wait_log("ready: web[", count=2)

    def ask(request: dict[str, object]) -> dict[str, object]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(json.dumps(request).encode() + b"\n")
            return json.loads(client.makefile("rb").readline())

    refused = [
        ask({"command": "quit"}),
        ask({"command": "quit", "token": "wrong"}),
        ask({"command": "incr", "args": {"name": "web"}, "token": 123}),
    ]
    assert all(r["error"] == "unauthorized: missing or wrong token" for r in refused)
    token = "s3cret-token-of-some-length"
    ok = ask({"command": "numprocesses", "args": {"name": "web"}, "token": token})
    assert ok["ok"] is True and ok["result"] == 2  # incr did not run
    assert sup.proc is not None and sup.proc.poll() is None  # nor did quit


def test_loose_token_file_is_a_startup_error(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-some-length\n")
    token_file.chmod(0o644)
    sup = SupervisorProcess(
        f"[circus]\nendpoint = tcp://127.0.0.1:1\ntoken_file = {token_file}\n" + CONFIG
    )
    try:
        sup.start(wait=None)
        assert sup.wait(timeout=10) != 0
        assert f"token file {token_file} is mode 644" in sup.log()
        assert "spawned:" not in sup.log()
    finally:
        sup.stop()


def test_circus_tcp_endpoint_without_token_gets_a_generated_one(
    juggler, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    port = free_port()
    sup = juggler(f"[circus]\nendpoint = tcp://127.0.0.1:{port}\n" + CONFIG)
    token_file = tmp_path / "juggler" / f"tcp-127.0.0.1-{port}.token"
    assert f"is in {token_file}" in sup.log()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # The same user's CLI finds the token on its own, and with no endpoint
    # given, the daemon too (by that token's name), as circusctl found
    # circusd on tcp://127.0.0.1:5555 with no option.
    sup.endpoint = f"tcp://127.0.0.1:{port}"
    assert sup.ctl_json("numwatchers") == 1
    env = {k: v for k, v in os.environ.items() if k != "JUGGLER_ENDPOINT"}
    done = subprocess.run(
        [*juggler_command(), "--json", "numwatchers"],
        env={**env, "XDG_RUNTIME_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "1"), done.stderr
    # A stranger without it gets nothing.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b'{"command": "list"}\n')
        reply = json.loads(client.makefile("rb").readline())
    assert reply == {"ok": False, "error": "unauthorized: missing or wrong token"}
    # The generated token lives as long as the daemon.
    assert sup.ctl_json("quit") == "stopping"
    assert sup.wait(timeout=15) == 0
    assert not token_file.exists()


def test_options_get_set_and_globaloptions(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[", count=2)
    options = sup.ctl_json("options", "web")
    assert options["numprocesses"] == 2 and options["graceful_timeout"] == 30.0
    assert sup.ctl_json("get", "web", "numprocesses", "stop_signal") == {
        "numprocesses": 2,
        "stop_signal": "SIGTERM",
    }
    changed = sup.ctl_json("set", "web", "numprocesses", "3", "graceful_timeout", "5")
    assert changed["changed"] == ["graceful_timeout", "numprocesses"]
    wait_for(lambda: len(sup.serving()) == 3)
    assert sup.ctl_json("get", "web", "graceful_timeout") == {"graceful_timeout": 5.0}
    bad = sup.ctl("set", "web", "numprocesses", "lots")
    assert bad.returncode == 1 and bad.stderr.startswith("error: numprocesses:")
    fixed = sup.ctl("set", "web", "name", "other")
    assert fixed.stderr.strip() == "error: option 'name' cannot be set at run time"
    assert "endpoint" in sup.ctl_json("globaloptions")


def test_add_and_rm_a_watcher(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[", count=2)
    runner = " ".join(runner_command())
    cmd = (
        f"{runner} serve --fd $(circus.sockets.web) --python-path {APPS_DIR} hello:app"
    )
    added = sup.ctl_json("add", "web2", cmd, "--start")
    assert added["state"] == "running" and len(added["processes"]) == 1
    assert sup.ctl_json("list") == ["web", "web2"]
    assert sup.ctl("add", "web2", "true").stderr.strip() == (
        "error: a watcher named 'web2' exists already"
    )
    assert sup.ctl_json("rm", "web2") == ["web"]
    assert len(sup.serving()) == 2


def test_add_takes_options_read_as_the_config_file_reads_them(juggler):
    sup = juggler(CONFIG)
    sup.wait_log("ready: web[", count=2)
    options = ["--option", "numprocesses=3", "--option", "warmup_delay=0"]
    added = sup.ctl_json(
        "add",
        "sl",
        "sleep 1000",
        *options,
        "--option",
        "ready = none",
        "--option",
        "copy_env=yes",
        "--start",
    )
    assert added["state"] == "running" and len(added["processes"]) == 3
    got = sup.ctl_json("options", "sl")
    assert got["numprocesses"] == 3 and got["warmup_delay"] == 0.0
    # copy_env: the daemon's own environment (the harness set this variable).
    assert got["ready"] == "none" and got["env"]["JUGGLER_ENDPOINT"] == sup.endpoint
    # Over the protocol: options as an object; numbers are read as text is.
    reply = json.loads(
        raw_exchange(
            control_path(sup),
            json.dumps(
                {
                    "command": "add",
                    "args": {
                        "name": "two",
                        "cmd": "sleep 1000",
                        "options": {"numprocesses": 2, "ready": "none"},
                    },
                }
            ).encode()
            + b"\n",
        )
    )
    assert reply["ok"] and reply["result"]["numprocesses"] == 2
    assert "JUGGLER_ENDPOINT" not in sup.ctl_json("options", "two")["env"]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--option", "nosuch=1"], "unknown option 'nosuch'"),
        (
            ["--option", "numprocesses=lots"],
            "numprocesses: expected an integer, got 'lots'",
        ),
        (
            ["--option", "singleton=true", "--option", "numprocesses=2"],
            "bad is a singleton: numprocesses must be 0 or 1",
        ),
        (
            ["--option", "copy_path=true"],
            "copy_path: needs copy_env = true (as in Circus)",
        ),
        (["--option", "name=other"], "option 'name' cannot be set at run time"),
        (["--option", "stdin_socket=nope"], "stdin_socket: no [socket:nope]"),
        (
            ["--option", "args=$(circus.sockets.nope)"],
            "$(circus.sockets.nope): no [socket:nope] section (sockets: web)",
        ),
        (["--option", "numprocesses"], "--option takes KEY=VALUE, got 'numprocesses'"),
    ],
    # Plain ids: the test's id lands in the environment the watchers copy.
    ids=lambda value: "" if isinstance(value, str) else value[1].split("=")[0],
)
def test_add_with_a_bad_option_adds_nothing(juggler, options, error):
    sup = juggler(CONFIG)
    done = sup.ctl("add", "bad", "sleep 1000", *options, "--start")
    assert done.returncode == 1
    assert done.stderr == f"error: {error}\n"
    assert sup.ctl_json("list") == ["web"]
