"""Tokens and private directories of the control channel."""

from __future__ import annotations

import os

import pytest
from control_support import free_port
from harness import SupervisorProcess

from juggler.supervisor import endpoint

WATCHER = """
[watcher:sl]
cmd = sleep 1000
ready = none
"""
TOKEN = "s3cret-token-of-some-length"


def failed_start(sup: SupervisorProcess) -> list[str]:
    """Start a juggler that must refuse to; its error lines."""
    sup.start(wait=None)
    assert sup.wait(timeout=15) == 1
    log = sup.log()
    assert "spawned:" not in log and "Traceback" not in log
    return [line for line in log.splitlines() if line.startswith("error:")]


def test_a_loose_runtime_directory_gets_no_token(tmp_path):
    runtime = tmp_path / "juggler"
    runtime.mkdir()
    runtime.chmod(0o777)
    port = free_port()
    sup = SupervisorProcess(
        f"[circus]\nendpoint = tcp://127.0.0.1:{port}\n" + WATCHER,
        env={"XDG_RUNTIME_DIR": str(tmp_path)},
    )
    try:
        assert failed_start(sup) == [
            f"error: cannot write the token for tcp://127.0.0.1:{port}: directory "
            f"{runtime} must be owned by uid {os.getuid()} and mode 0700 (it is "
            f"uid {os.getuid()}, mode 777); chmod 700 {runtime}"
        ]
        assert os.listdir(runtime) == []
    finally:
        sup.stop()


def test_a_loose_control_socket_directory_is_refused():
    sup = SupervisorProcess("[circus]\nendpoint = ipc://{tmp}/open/c.sock\n" + WATCHER)
    directory = os.path.join(sup.tmp, "open")
    os.mkdir(directory)
    os.chmod(directory, 0o755)
    try:
        assert failed_start(sup) == [
            f"error: control endpoint unix://{directory}/c.sock: directory "
            f"{directory} must be owned by uid {os.getuid()} and mode 0700 (it "
            f"is uid {os.getuid()}, mode 755); chmod 700 {directory}"
        ]
        assert not os.path.exists(f"{directory}/c.sock")
    finally:
        sup.stop()


def test_a_socket_in_a_shared_directory_is_refused_with_advice_that_fits():
    # Many Circus configs name ipc:///tmp/...: /tmp is shared (sticky), so
    # chmod is the wrong advice; a directory of one's own is the right one.
    sup = SupervisorProcess(
        "[circus]\nendpoint = ipc:///tmp/juggler-test-c.sock\n" + WATCHER
    )
    try:
        [line] = failed_start(sup)
        assert line.startswith(
            "error: control endpoint unix:///tmp/juggler-test-c.sock"
        )
        assert "chmod" not in line
        assert line.endswith(
            "put the socket in a directory of its own, such as "
            f"unix://{endpoint.runtime_dir()}/juggler.sock"
        )
        assert not os.path.exists("/tmp/juggler-test-c.sock")
    finally:
        sup.stop()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a file away")
def test_a_token_file_of_another_user_is_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    os.chown(token_file, 65534, 65534)
    sup = SupervisorProcess(
        f"[circus]\nendpoint = tcp://127.0.0.1:{free_port()}\n"
        f"token_file = {token_file}\n" + WATCHER
    )
    try:
        assert failed_start(sup) == [
            f"error: token file {token_file} belongs to uid 65534, not to this "
            "user (uid 0); only its owner may use it"
        ]
    finally:
        sup.stop()


def test_the_cli_takes_a_token_file_or_juggler_token(juggler, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    sup = juggler(
        f"[circus]\nendpoint = tcp://127.0.0.1:{port}\ntoken_file = {token_file}\n"
        + WATCHER
    )
    # Nowhere to find the token: the daemon refuses, in one line.
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "empty"))
    sup.endpoint = f"tcp://127.0.0.1:{port}"
    bare = sup.ctl("numwatchers")
    assert bare.returncode == 1
    assert bare.stderr == "error: unauthorized: missing or wrong token\n"
    given = sup.ctl("--token-file", str(token_file), "--json", "numwatchers")
    assert given.returncode == 0 and given.stdout.strip() == "1"
    monkeypatch.setenv("JUGGLER_TOKEN", TOKEN)
    assert sup.ctl_json("numwatchers") == 1
    token_file.chmod(0o644)
    loose = sup.ctl("--token-file", str(token_file), "numwatchers")
    assert loose.returncode == 1
    assert loose.stderr == (
        f"error: token file {token_file} is mode 644; others must not read it "
        f"(chmod 600 {token_file})\n"
    )
