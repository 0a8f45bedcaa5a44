"""The installed ``runner`` CLI: its usage and boot errors, and the
chaussette command lines it keeps working.

Every failure is checked twice: the exit code a supervisor acts on (2 usage,
3 cannot boot, 4 app broken) and the one ``error: ...`` line a person reads.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import harness
import pytest
from harness import run_cli

from juggler.backends import registry
from runner.support import (
    ANY_PORT,
    APPS,
    CommandRunner,
    assert_fails,
    get,
    stop_and_wait,
)

HELLO = b"Hello, world!"

# -- usage errors: exit 2 ------------------------------------------------------


def test_unknown_option() -> None:
    result = run_cli(["serve", "--no-such-option", "hello:app"])
    assert_fails(result, 2, "unrecognized arguments: --no-such-option")


def test_fd_and_uds_together() -> None:
    result = run_cli(["serve", "--fd", "3", "--uds", "/tmp/x.sock", "hello:app"])
    assert_fails(result, 2, "give only one of --fd")


def test_env_without_equals_sign() -> None:
    result = run_cli(["serve", "--env", "NO_EQUALS_SIGN", "hello:app"])
    assert_fails(result, 2, '--env "NO_EQUALS_SIGN": expected KEY=VALUE')


@pytest.mark.parametrize("app", ["a:b:c", "mod:1x", ":app", "1mod:app", "m:f(x)"])
def test_malformed_app(app: str) -> None:
    result = run_cli(["serve", *ANY_PORT, app])
    assert_fails(result, 2, f'app "{app}"')


# -- boot errors: exit 3 -------------------------------------------------------


def test_unknown_backend_lists_the_known_ones() -> None:
    # A backend missing from this installation: exit 3, so that a
    # supervisor rests the watcher instead of respawning it.
    result = run_cli(["serve", *ANY_PORT, "--backend", "nosuch", "hello:app"])
    line = assert_fails(result, 3, 'unknown backend "nosuch"')
    for name in registry.BUILTIN:
        assert name in line


def test_fd_that_is_closed() -> None:
    # subprocess closes every descriptor not in pass_fds: 42 is not open.
    result = run_cli(["serve", "--fd", "42", "hello:app"])
    assert_fails(result, 3, "fd 42 is not open")


def test_fd_of_a_regular_file(tmp_path: Path) -> None:
    with open(tmp_path / "plain.txt", "w") as f:
        fd = f.fileno()
        result = run_cli(["serve", "--fd", str(fd), "hello:app"], pass_fds=(fd,))
    assert_fails(result, 3, f"fd {fd} is a file or device, not a socket")


def test_fd_of_a_udp_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        fd = udp.fileno()
        result = run_cli(["serve", "--fd", str(fd), "hello:app"], pass_fds=(fd,))
    assert_fails(result, 3, f"fd {fd} is a SOCK_DGRAM socket, not a stream")


def test_fd_of_a_tcp_socket_that_is_not_listening() -> None:
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        fd = tcp.fileno()
        result = run_cli(["serve", "--fd", str(fd), "hello:app"], pass_fds=(fd,))
    assert_fails(result, 3, f"fd {fd} is a AF_INET socket that is not listening")


def test_address_family_unix_with_a_tcp_socket() -> None:
    with harness.bind_tcp() as tcp:
        fd = tcp.fileno()
        args = ["serve", "--fd", str(fd), "--address-family", "AF_UNIX", "hello:app"]
        result = run_cli(args, pass_fds=(fd,))
    assert_fails(result, 3, "AF_INET socket but --address-family AF_UNIX")


def test_socket_type_other_than_the_inherited_one() -> None:
    with harness.bind_tcp() as tcp:
        fd = tcp.fileno()
        args = ["serve", "--fd", str(fd), "--socket-type", "SOCK_DGRAM", "hello:app"]
        result = run_cli(args, pass_fds=(fd,))
    assert_fails(result, 3, "SOCK_STREAM socket but --socket-type SOCK_DGRAM")


def test_a_backend_whose_package_is_missing_names_the_extra(tmp_path: Path) -> None:
    # A waitress that cannot be imported stands for one not installed.
    (tmp_path / "waitress").mkdir()
    (tmp_path / "waitress" / "__init__.py").write_text("raise ImportError('gone')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    args = ["serve", *ANY_PORT, "--backend", "waitress", "hello:app"]
    result = run_cli(args, env=env)
    assert_fails(result, 3, "pip install 'juggler[waitress]'")


def test_wsgi_app_on_an_asgi_backend_names_the_wsgi_backends() -> None:
    result = run_cli(["serve", *ANY_PORT, "--backend", "uvicorn", "hello:app"])
    line = assert_fails(result, 3, "backend uvicorn serves ASGI apps only")
    for name in ("wsgiref", "gevent", "waitress"):
        assert name in line


def test_uds_path_of_a_live_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    with harness.bind_unix(path):
        result = run_cli(["serve", "--uds", path, "hello:app"])
        assert_fails(result, 3, f"{path} is in use by another live server")
        assert os.path.exists(path)  # the runner left the live socket alone


def test_host_port_already_in_use() -> None:
    with harness.bind_tcp() as taken:
        port = taken.getsockname()[1]
        result = run_cli(["serve", "--host", "127.0.0.1", "--port", str(port), "x"])
    assert_fails(result, 3, f"cannot listen on 127.0.0.1:{port}", "in use")


# -- chaussette's command lines ------------------------------------------------


def test_no_subcommand_is_serve() -> None:
    def command(fd: int) -> list[str]:
        return ["--fd", str(fd), "--python-path", APPS, "hello:app"]

    with CommandRunner(command) as runner:
        assert get(runner, "/") == (200, HELLO)


def test_host_fd_url() -> None:
    def command(fd: int) -> list[str]:
        return ["--host", f"fd://{fd}", "--python-path", APPS, "hello:app"]

    with CommandRunner(command) as runner:
        assert get(runner, "/") == (200, HELLO)


@pytest.mark.parametrize("backlog", ["16", "2048"])
def test_backlog_with_fd_warns_and_serves(backlog: str) -> None:
    # 2048 is chaussette's default, and in many Circus configs: still
    # ignored, so still warned about.
    with harness.running("hello:app", extra_args=["--backlog", backlog]) as runner:
        assert get(runner, "/") == (200, HELLO)
        assert "--backlog is ignored with --fd" in runner.log()


def test_no_backlog_with_fd_no_warning() -> None:
    with harness.running("hello:app") as runner:
        assert get(runner, "/") == (200, HELLO)
        assert "--backlog" not in runner.log()


def test_use_reloader_is_the_reloader() -> None:
    with harness.running("hello:app", extra_args=["--use-reloader"]) as runner:
        assert get(runner, "/") == (200, HELLO)
        assert "reloader: watching" in runner.log()


def test_log_output_file(tmp_path: Path) -> None:
    log_file = tmp_path / "runner.log"
    args = ["--log-output", str(log_file)]
    with harness.running("hello:app", extra_args=args) as runner:
        assert get(runner, "/") == (200, HELLO)
        harness.wait_for(lambda: "serving: " in log_file.read_text())
        assert stop_and_wait(runner) == 0
        assert "serving: " not in runner.log()  # nothing went to stderr
    assert f"stopped: pid={runner.proc.pid}" in log_file.read_text()  # type: ignore[union-attr]


def test_python_path_with_two_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (second / "pp_greeting.py").write_text("GREETING = b'from folder b'\n")
    (first / "pp_app.py").write_text(
        "from pp_greeting import GREETING\n\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', str(len(GREETING)))])\n"
        "    return [GREETING]\n"
    )
    paths = f"{first}{os.pathsep}{second}"

    def command(fd: int) -> list[str]:
        return ["serve", "--fd", str(fd), "--python-path", paths, "pp_app:app"]

    with CommandRunner(command) as runner:
        assert get(runner, "/") == (200, b"from folder b")
