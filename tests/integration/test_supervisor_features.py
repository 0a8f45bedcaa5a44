"""Watcher options end to end: max_age, readiness, privileges, rlimits, fds."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from harness import (
    APPS_DIR,
    REPO_DIR,
    SupervisorProcess,
    http_get,
    juggler_command,
    stop_group,
    wait_for,
)

WEB = """
[socket:web]
path = {tmp}/web.sock

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {tmp} --python-path {apps}
args = %(app)s
numprocesses = 2
copy_env = true
%(extra)s
"""


@pytest.fixture
def supervisor():
    started: list[SupervisorProcess] = []

    def start(config: str) -> SupervisorProcess:
        sup = SupervisorProcess(config)
        started.append(sup)
        sup.start()
        return sup

    yield start
    for sup in started:
        sup.stop()


def test_max_age_recycles_one_at_a_time_keeping_the_count(supervisor):
    sup = supervisor(
        WEB % {"app": "hello:app", "extra": "max_age = 1\nmax_age_variance = 0"}
    )
    sup.wait_log("ready: web[", count=2)
    first = set(sup.serving())
    sup.wait_log("recycling: web[", count=2)
    wait_for(lambda: not first & set(sup.serving()) and len(sup.serving()) == 2)
    log = sup.log()
    assert "after max_age=1s" in log
    # A successor is ready before its predecessor is told to stop.
    first_recycle = log.index("recycling: web[")
    assert log.index("ready: web[", first_recycle) < log.index(
        "stopping: web[", first_recycle
    )
    assert http_get(f"{sup.tmp}/web.sock")[0] == 200


def test_restart_to_a_broken_app_keeps_the_old_processes(supervisor):
    sup = supervisor(WEB % {"app": "replaceable:app", "extra": ""})
    shutil.copy(APPS_DIR / "replaceable.py", os.path.join(sup.tmp, "replaceable.py"))
    sup.wait_log("ready: web[", count=2)
    serving = set(sup.serving())
    with open(os.path.join(sup.tmp, "replaceable.py"), "w") as f:
        f.write("this is not python\n")
    done = sup.ctl("restart", "web")
    assert done.returncode == 1
    assert done.stderr.startswith("error: web: a new process did not become ready")
    assert done.stderr.count("\n") == 1
    assert set(sup.serving()) == serving
    assert http_get(f"{sup.tmp}/web.sock")[0] == 200
    # The failed replacement is not a crash of the watcher: no flapping.
    assert "(replacement failed)" in sup.log() and "flapping" not in sup.log()


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_uid_gid_drop_is_complete(supervisor):
    # pytest's tmp_path sits in a 0700 folder that nobody cannot enter.
    shared = tempfile.mkdtemp(prefix="juggler-identity-")
    os.chmod(shared, 0o777)
    report = Path(shared) / "identity.json"
    sup = supervisor(
        f"""
[watcher:dropped]
# The venv's interpreter lives under /root, which nobody cannot enter.
cmd = /usr/bin/python3 {{apps}}/identity.py {report}
uid = nobody
gid = nogroup
rlimit_nofile = 321
umask = 027
ready = none
"""
    )
    wait_for(report.exists, message="identity report")
    identity = json.loads(report.read_text())
    assert identity["uid"] == [65534, 65534, 65534]
    assert identity["gid"] == [65534, 65534, 65534]
    assert identity["groups"] == [65534]
    assert identity["caps"]["CapEff"] == "0000000000000000"
    assert identity["caps"]["CapPrm"] == "0000000000000000"
    assert identity["nofile"] == [321, 321]
    assert identity["umask"] == 0o027
    assert identity["fds"] == [0, 1, 2, 3]  # 3: listdir's own descriptor
    assert sup.serving()
    shutil.rmtree(shared)


@pytest.fixture
def system_python_tree():
    """juggler importable by /usr/bin/python3 from a folder anyone may read.

    The venv's interpreter lives under /root, which a dropped child cannot
    enter; the system one (the same minor version) runs the same code.
    """
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.fail("dropped-privilege tests need /usr/bin/python3")
    tree = tempfile.mkdtemp(prefix="juggler-tree-")
    os.chmod(tree, 0o755)
    os.mkdir(os.path.join(tree, "juggler"))
    for package in ("runner", "backends", "supervisor"):
        os.symlink(REPO_DIR / package, os.path.join(tree, "juggler", package))
    yield tree
    shutil.rmtree(tree)


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_a_dropped_runner_announces_itself_on_its_notify_socket(
    supervisor, system_python_tree
):
    sup = supervisor(
        f"""
[socket:web]
path = {{tmp}}/web.sock

[watcher:web]
cmd = /usr/bin/python3 -m juggler.runner serve --fd $(circus.sockets.web)
args = --python-path {{apps}} hello:app
uid = nobody
gid = nogroup
ready = notify
ready_timeout = 20
numprocesses = 2

[env:web]
PYTHONPATH = {system_python_tree}
"""
    )
    sup.wait_log("ready: web[", count=2)
    assert "not ready" not in sup.log()
    for pid in sup.serving():
        with open(f"/proc/{pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:"))
        assert uids.split()[1:] == ["65534"] * 4
    assert http_get(f"{sup.tmp}/web.sock") == (200, b"Hello, world!")
    # Each socket sits in a folder of its child's own, out of others' reach.
    [runtime] = {
        os.path.dirname(os.path.dirname(path)) for path in notify_sockets(sup.serving())
    }
    assert os.stat(runtime).st_mode & 0o777 == 0o711
    for path in notify_sockets(sup.serving()):
        folder = os.stat(os.path.dirname(path))
        assert (folder.st_uid, folder.st_mode & 0o777) == (65534, 0o700)
        assert os.stat(path).st_mode & 0o777 == 0o600


def notify_sockets(pids: list[int]) -> list[str]:
    paths = []
    for pid in pids:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(
                item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item
            )
        paths.append(env[b"NOTIFY_SOCKET"].decode())
    return paths


def test_adopts_an_inherited_socket_instead_of_binding(tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "adopted.sock"))
    listener.listen(16)
    # A descriptor number far from those pytest's output capture uses.
    fd = 57
    with pytest.raises(OSError):
        os.fstat(fd)
    os.dup2(listener.fileno(), fd, inheritable=False)
    config = tmp_path / "juggler.ini"
    config.write_text(
        f"""
[socket:web]
fd = {fd}

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {APPS_DIR} hello:app
copy_env = true
"""
    )
    env = {**os.environ, "JUGGLER_ENDPOINT": f"unix://{tmp_path}/ctl.sock"}
    env["PATH"] = f"{os.path.dirname(juggler_command()[0])}:{env['PATH']}"
    log = open(tmp_path / "log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*juggler_command(), str(config)],
        pass_fds=(fd,),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        wait_for(lambda: b"ready: web[1]" in (tmp_path / "log").read_bytes())
        assert http_get(str(tmp_path / "adopted.sock")) == (200, b"Hello, world!")
    finally:
        stop_group(proc)
        log.close()
        os.close(fd)
        listener.close()
    # An adopted path is not ours to remove.
    assert (tmp_path / "adopted.sock").exists()


LATE = """
[watcher:late]
cmd = {python} {apps}/late_ready.py {tmp}/runs %(silent)d
numprocesses = 2
ready = notify
ready_timeout = 1
graceful_timeout = 5
flapping.retry_in = 60
"""


def watcher_status(sup: SupervisorProcess, name: str) -> dict:
    return sup.status()[name]  # type: ignore[return-value]


def test_a_process_not_ready_at_start_is_replaced(supervisor):
    sup = supervisor(LATE % {"silent": 1})
    sup.wait_log("not ready: late[")

    def two_ready() -> bool:
        state = watcher_status(sup, "late")
        ready = [p for p in state["processes"] if p["ready"]]
        return state["state"] == "running" and len(ready) == 2

    wait_for(two_ready, message="two ready processes")
    assert "flapping" not in sup.log()


def test_a_watcher_whose_processes_never_get_ready_flaps_not_runs_empty(
    supervisor,
):
    sup = supervisor(LATE % {"silent": 1000})
    wait_for(
        lambda: watcher_status(sup, "late")["state"] == "flapping",
        message="late flapping",
    )
    assert "flapping: late 2 processes died young in a row" in sup.log()
    assert sup.serving("late") == []


def test_a_command_that_exits_at_once_backs_off_even_when_ready_at_once(
    supervisor,
):
    # ready = none makes every process ready the moment it starts; being
    # ready must not end the streak of fast deaths, living must.
    sup = supervisor(
        """
[watcher:fail]
cmd = /bin/false
numprocesses = 3
ready = none
check_flapping = false
"""
    )
    log = sup.wait_log("respawn: fail in 5.0s after", timeout=30)
    spawns = log.count("spawned: fail[")
    delays = [float(d) for d in re.findall(r"respawn: fail in ([\d.]+)s", log)]
    print(f"{spawns} spawns before the back-off reached 5 s")
    assert delays == sorted(delays) and delays[0] == 0.1
    # Without back-off, /bin/false is respawned hundreds of times a second.
    assert spawns < 40


def test_shell_args_become_the_positional_parameters_of_the_shell(supervisor):
    # Circus runs shell = true commands as sh -c CMD SHELL_ARGS...: the
    # shell sees them as $0, $1. Pipes and redirections work in CMD.
    sup = supervisor(
        """
[watcher:sh]
cmd = echo "$0 $1" | tr a-z A-Z > {tmp}/out; exec sleep 60
shell = true
shell_args = first second
ready = none
"""
    )
    out = Path(sup.tmp) / "out"
    wait_for(lambda: out.exists() and out.read_text(), message="the shell's output")
    assert out.read_text() == "FIRST SECOND\n"


INETD_STYLE = (
    "import socket, time; listener = socket.socket(fileno=0); "
    "conn, _ = listener.accept(); conn.sendall(b'from stdin'); conn.close(); "
    "time.sleep(60)"
)


def test_stdin_socket_is_the_processes_stdin(supervisor):
    # Circus's stdin_socket: the listening socket as fd 0, for programs
    # written to be started by inetd.
    sup = supervisor(
        f"""
[socket:web]
path = {{tmp}}/web.sock

[watcher:inetd]
cmd = {{python}} -c "{INETD_STYLE}"
stdin_socket = web
ready = none
"""
    )
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(f"{sup.tmp}/web.sock")
        assert client.recv(100) == b"from stdin"


LOGGER_CONFIG = {
    "handlers": {
        "custom": {
            "class": "logging.FileHandler",
            "filename": "{tmp}/custom.log",
            "formatter": "marked",
        }
    },
    "formatters": {"marked": {"format": "CUSTOM %(levelname)s %(message)s"}},
    "loggers": {"juggler": {"handlers": ["custom"], "level": "INFO"}},
}


def test_loggerconfig_is_applied(supervisor, tmp_path):
    config = json.dumps(LOGGER_CONFIG).replace("{tmp}", str(tmp_path))
    (tmp_path / "logging.json").write_text(config)
    supervisor(
        f"""
[circus]
loggerconfig = {tmp_path}/logging.json

[watcher:idle]
cmd = sleep 60
ready = none
"""
    )
    log = tmp_path / "custom.log"
    wait_for(lambda: log.exists() and "CUSTOM INFO started:" in log.read_text())


def test_a_broken_loggerconfig_stops_the_start_in_one_line(tmp_path):
    (tmp_path / "logging.json").write_text("{not json")
    sup = SupervisorProcess(
        f"[circus]\nloggerconfig = {tmp_path}/logging.json\n\n"
        "[watcher:idle]\ncmd = sleep 60\n"
    )
    try:
        sup.start(wait=None)
        assert sup.wait(timeout=20) == 2
        [line] = [x for x in sup.log().splitlines() if "error:" in x]
        assert line.startswith(f"error: loggerconfig {tmp_path}/logging.json: ")
    finally:
        sup.stop()


def test_warmup_delay_spaces_the_spawns_of_a_watcher(supervisor):
    # As Circus did: warmup_delay seconds between two spawns of a watcher.
    sup = supervisor(
        """
[watcher:slow]
cmd = sleep 60
numprocesses = 3
warmup_delay = 0.4
"""
    )
    sup.wait_log("ready: slow[", count=3)
    ages = sorted(p["age"] for p in sup.status()["slow"]["processes"])
    gaps = [later - earlier for earlier, later in itertools.pairwise(ages)]
    assert all(gap >= 0.39 for gap in gaps), ages
