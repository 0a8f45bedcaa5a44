"""listen.inherit trusts nothing about a descriptor; bind_* fail clearly."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest

from juggler.runner import listen
from juggler.runner.errors import BindError


def _still_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def _refused(fd: int, fragment: str, **expect: int) -> None:
    with pytest.raises(BindError) as info:
        listen.inherit(fd, **expect)
    assert fragment in info.value.message
    # An unfit descriptor is reported, not closed: it is not ours.
    assert _still_open(fd)


def test_inherit_a_listening_tcp_socket() -> None:
    original = harness.bind_tcp()
    address = original.getsockname()
    original.set_inheritable(True)

    sock = listen.inherit(original.detach())
    with sock:
        assert sock.family == socket.AF_INET
        assert sock.getsockname() == address
        # Not leaked into processes the app spawns.
        assert not sock.get_inheritable()


def test_inherit_a_listening_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with listen.inherit(harness.bind_unix(path).detach()) as sock:
        assert sock.family == socket.AF_UNIX
        assert sock.getsockname() == path
        assert listen.describe(sock) == f"unix {path}"


def test_inherit_refuses_a_socketpair() -> None:
    left, right = socket.socketpair()
    with left, right:
        _refused(left.fileno(), "socket that is not listening")


def test_inherit_refuses_udp(udp: socket.socket) -> None:
    _refused(udp.fileno(), "SOCK_DGRAM socket, not a stream socket")


def test_inherit_refuses_a_tcp_socket_that_is_not_listening() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        _refused(sock.fileno(), "AF_INET socket that is not listening")


def test_inherit_refuses_a_regular_file(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f:
        _refused(f.fileno(), "is a file or device, not a socket")


def test_inherit_refuses_a_pipe() -> None:
    read_end, write_end = os.pipe()
    try:
        _refused(read_end, "is a FIFO, not a socket")
    finally:
        os.close(read_end)
        os.close(write_end)


def test_inherit_refuses_a_closed_descriptor() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(BindError, match=f"fd {read_end} is not open"):
        listen.inherit(read_end)


def test_inherit_checks_the_expected_family_and_type() -> None:
    with harness.bind_tcp() as sock:
        fd = sock.fileno()
        _refused(fd, "--address-family AF_UNIX", expect_family=socket.AF_UNIX)
        _refused(fd, "--socket-type SOCK_DGRAM", expect_type=socket.SOCK_DGRAM)


def test_bind_tcp_port_in_use() -> None:
    with harness.bind_tcp() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(BindError, match=f"cannot listen on 127.0.0.1:{port}"):
            listen.bind_tcp("127.0.0.1", port, 16)


def test_bind_tcp_ipv6_in_brackets() -> None:
    with listen.bind_tcp("[::1]", 0, 16) as sock:
        assert sock.family == socket.AF_INET6
        assert listen.describe(sock).startswith("tcp [::1]:")


def test_bind_unix_replaces_a_stale_socket_file(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    harness.bind_unix(path).close()  # the file stays; nobody listens

    with listen.bind_unix(path, 16) as sock:
        assert sock.getsockname() == path


def test_bind_unix_refuses_a_live_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    with (
        harness.bind_unix(path),
        pytest.raises(BindError, match="in use by another live server"),
    ):
        listen.bind_unix(path, 16)


def test_bind_unix_refuses_to_replace_a_file(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")

    with pytest.raises(BindError, match="exists and is not a socket"):
        listen.bind_unix(str(path), 16)
    assert path.read_text() == "precious"
