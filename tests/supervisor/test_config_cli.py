"""``juggler --check [--json] CONFIG`` through the installed command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CIRCUS = Path(__file__).resolve().parents[1] / "configs" / "circus"


def juggler_command() -> list[str]:
    script = Path(sys.executable).with_name("juggler")
    if script.exists():
        return [str(script)]
    found = shutil.which("juggler")
    return [found] if found else [sys.executable, "-m", "juggler.supervisor.cli"]


def juggler(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JUGGLER_TEST_PORT": "8123"}
    return subprocess.run(
        [*juggler_command(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=cwd,
        env=env,
    )


def test_check_valid_config_exits_0_with_warnings_on_stderr() -> None:
    result = juggler("--check", str(CIRCUS / "examples" / "example5.ini"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("warning: ") for line in lines)
    assert any("example5.ini:6: [circus] httpd: ignored:" in line for line in lines)


def test_check_broken_config_exits_2_with_one_line_per_error(tmp_path: Path) -> None:
    config = tmp_path / "broken.ini"
    config.write_text(
        "[watcher:web]\ncmd = x --fd $(circus.sockets.nope)\nnumprocesses = lots\n"
        "\n[socket:api]\nport = 99999\n"
    )
    result = juggler("--check", "broken.ini", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: broken.ini:6: [socket:api] port: expected a port from 0 to 65535, "
        "got '99999'",
        "error: broken.ini:3: [watcher:web] numprocesses: expected an integer, "
        "got 'lots'",
        "error: broken.ini:2: [watcher:web] cmd: $(circus.sockets.nope): "
        "no [socket:nope] section (sockets: api)",
    ]


def test_check_missing_file_exits_2(tmp_path: Path) -> None:
    result = juggler("--check", str(tmp_path / "none.ini"))
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {tmp_path}/none.ini: cannot read the configuration: "
        "No such file or directory\n"
    )


def test_check_duplicate_section_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "c.ini").write_text("[socket:a]\nport=1\n[socket:a]\nport=2\n")
    result = juggler("--check", "c.ini", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "error: c.ini:3: [socket:a]: duplicate section (first at line 1)\n"
    )


def test_check_json_shape(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "redis.ini").write_text(
        "[watcher:redis]\ncmd = redis-server --port $(circus.env.JUGGLER_TEST_PORT)\n"
        "priority = 10\n"
    )
    (tmp_path / "c.ini").write_text(
        """\
[circus]
include_dir = conf.d
umask = 027

[socket:web]
host = 127.0.0.1
port = 0

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) hello:app
args = --worker $(circus.wid)
numprocesses = 2
stop_signal = INT
stdout_stream.class = FileStream
stdout_stream.filename = web.log
hooks.before_spawn = hooks.check, true

[env:web]
WEB_ID = w$(circus.wid)

[plugin:flapping]
use = circus.plugins.flapping.Flapping
max_retry = 3
"""
    )
    result = juggler("--check", "--json", "c.ini", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"path", "files", "circus", "env", "sockets", "watchers",
                         "warnings"}  # fmt: skip
    assert data["files"] == ["c.ini", "conf.d/redis.ini"]
    assert data["circus"]["umask"] == "0027"
    assert data["sockets"]["web"] | {"umask": None} == {
        "name": "web", "host": "127.0.0.1", "port": 0, "path": None,
        "family": "AF_INET", "type": "SOCK_STREAM", "proto": None,
        "backlog": 2048, "so_reuseport": False, "umask": None, "replace": False,
        "blocking": False, "interface": None, "fd": None,
    }  # fmt: skip
    web, redis = data["watchers"]["web"], data["watchers"]["redis"]
    assert web["cmd"] == "runner serve --fd $(circus.sockets.web) hello:app"
    assert web["args"] == "--worker $(circus.wid)"
    assert web["env"] == {"WEB_ID": "w$(circus.wid)"}
    assert (web["numprocesses"], web["stop_signal"]) == (2, "SIGINT")
    assert (web["sockets"], web["ready"]) == (["web"], "notify")
    assert web["stdout_stream"]["kind"] == "file"
    assert web["stdout_stream"]["filename"] == "web.log"
    assert web["hooks"] == {"before_spawn": {
        "name": "before_spawn", "target": "hooks.check", "ignore_failure": True,
    }}  # fmt: skip
    assert web["flapping"] == {
        "enabled": True, "attempts": 2, "window": 1.0, "retry_in": 7.0,
        "max_retry": 3,
    }  # fmt: skip
    assert redis["cmd"] == "redis-server --port 8123"
    assert (redis["priority"], redis["ready"], redis["sockets"]) == (10, "warmup", [])
    assert data["warnings"] == []
    assert result.stderr == ""


@pytest.mark.parametrize("args", [["--json", "c.ini"], ["--check"], []])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "c.ini").write_text("[watcher:w]\ncmd = x\n")
    result = juggler(*args, cwd=tmp_path)
    assert result.returncode == 2
    # One line: what is wrong and where the usage is.
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and line.endswith("(see juggler --help)")


def test_daemon_mode_stops_at_a_broken_config(tmp_path: Path) -> None:
    # Without --check, a broken config must fail the same way before the
    # arbiter is even imported: nothing is bound or spawned.
    (tmp_path / "c.ini").write_text("[watcher:w]\nnumprocesses = 1\n")
    result = juggler("--log-level", "debug", "c.ini", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr
        == "error: c.ini:1: [watcher:w]: cmd: missing (the command to run)\n"
    )


SAMPLES = Path(__file__).resolve().parents[1] / "configs" / "juggler"


def test_sample_config_is_valid() -> None:
    result = juggler("--check", "--json", "web.ini", cwd=SAMPLES)
    assert (result.returncode, result.stderr) == (0, "")
    data = json.loads(result.stdout)
    web = data["watchers"]["web"]
    assert (web["ready"], web["sockets"], web["env"]["WORKER"]) == (
        "notify", ["web"], "$(circus.wid)",
    )  # fmt: skip
    assert data["sockets"]["web"]["family"] == "AF_UNIX"
    assert data["sockets"]["web"]["umask"] == "0007"
    assert data["watchers"]["redis"]["ready"] == "none"


def test_sample_broken_config_lists_every_error() -> None:
    result = juggler("--check", "broken.ini", cwd=SAMPLES)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: broken.ini:2: [socket:web] port: expected a port from 0 to "
        "65535, got '80800'",
        "error: broken.ini:6: [watcher:web] numprocesses: expected an integer, "
        "got 'two'",
        "error: broken.ini:7: [watcher:web] stop_signal: expected a signal name "
        "or number, got 'SIGSTOPP'",
        "error: broken.ini:5: [watcher:web] cmd: $(circus.sockets.wbe): no "
        "[socket:wbe] section (sockets: web)",
    ]
