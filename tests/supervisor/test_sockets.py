"""sockets.py on real sockets: modes, replace, backlog, reuseport, IPv6,
blocking, and the in-place changes a reload makes."""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import replace

import pytest

from juggler.supervisor import sockets
from juggler.supervisor.config_model import SocketConfig
from juggler.supervisor.errors import BindError


@pytest.fixture
def bound():
    """``bound(spec)`` binds and closes at teardown."""
    made: list[sockets.BoundSocket] = []

    def bind(spec: SocketConfig) -> sockets.BoundSocket:
        sock = sockets.bind(spec)
        made.append(sock)
        return sock

    yield bind
    for sock in made:
        sock.close()


def unix(tmp_path, name="web", **kwargs) -> SocketConfig:
    return SocketConfig(name=name, path=str(tmp_path / f"{name}.sock"), **kwargs)


def tcp(host="127.0.0.1", **kwargs) -> SocketConfig:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return SocketConfig(name="web", host=host, port=0, family=family, **kwargs)


def queued_connections(listener: sockets.BoundSocket, limit: int = 64) -> int:
    """How many clients a UNIX listener that does not accept lets connect.

    The queue is emptied afterwards: a closed client's connection stays in
    the listener's queue until it is accepted.
    """
    clients = []
    try:
        for _ in range(limit):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            clients.append(client)
            try:
                client.connect(listener.spec.path)
            except BlockingIOError:
                return len(clients) - 1
        return limit
    finally:
        for client in clients:
            client.close()
        _drain(listener.sock)


def _drain(listener: socket.socket) -> None:
    blocking = listener.getblocking()
    listener.setblocking(False)
    try:
        while True:
            listener.accept()[0].close()
    except BlockingIOError:
        pass
    finally:
        listener.setblocking(blocking)


@pytest.mark.parametrize(
    ("umask", "mode"), [(0o117, 0o660), (0o000, 0o777), (0o077, 0o700)]
)
def test_umask_gives_the_socket_file_its_mode(tmp_path, bound, umask, mode):
    spec = unix(tmp_path, umask=umask)
    bound(spec)
    assert stat.S_IMODE(os.lstat(spec.path).st_mode) == mode


def test_default_umask_leaves_no_world_access(tmp_path, bound):
    spec = unix(tmp_path)
    bound(spec)
    assert stat.S_IMODE(os.lstat(spec.path).st_mode) & 0o007 == 0


def test_a_live_path_is_refused_unless_replace(tmp_path, bound):
    first = bound(unix(tmp_path))
    with pytest.raises(BindError, match="in use by a live server"):
        sockets.bind(unix(tmp_path))
    second = bound(unix(tmp_path, replace=True))
    # New clients reach the socket that took the path over.
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "web.sock"))
    second.sock.settimeout(5)
    conn, _ = second.sock.accept()
    conn.close()
    client.close()
    # Closing the first does not remove the second's file.
    first.close()
    assert (tmp_path / "web.sock").exists()
    second.close()
    assert not (tmp_path / "web.sock").exists()


def test_a_stale_socket_file_is_removed_and_a_regular_file_refused(tmp_path, bound):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "web.sock"))
    stale.close()  # the file stays, nothing listens
    bound(unix(tmp_path))
    (tmp_path / "other.sock").write_text("not a socket")
    with pytest.raises(BindError, match="exists and is not a socket"):
        sockets.bind(unix(tmp_path, name="other"))


def test_backlog_bounds_the_queue_and_adjust_changes_it_in_place(tmp_path, bound):
    spec = unix(tmp_path, backlog=2)
    sock = bound(spec)
    fd = sock.fd
    # Linux queues backlog + 1 connections on a UNIX listener.
    assert queued_connections(sock) == 3
    wider = replace(spec, backlog=6)
    assert sockets.adjustable(spec, wider)
    sockets.adjust(sock, wider)
    assert sock.fd == fd and sock.spec == wider
    assert queued_connections(sock) == 7


def test_adjust_changes_the_mode_of_the_path(tmp_path, bound):
    spec = unix(tmp_path, umask=0o077)
    sock = bound(spec)
    sockets.adjust(sock, replace(spec, umask=0o007))
    assert stat.S_IMODE(os.lstat(spec.path).st_mode) == 0o770


def test_what_adjust_can_and_cannot_change():
    spec = tcp()
    assert sockets.adjustable(spec, replace(spec, backlog=10, blocking=True))
    assert sockets.adjustable(spec, replace(spec, name="renamed"))
    assert not sockets.adjustable(spec, replace(spec, port=8001))
    assert not sockets.adjustable(spec, replace(spec, so_reuseport=True))
    assert not sockets.adjustable(spec, replace(spec, host="::1"))


def test_reuseport_lets_two_sockets_share_an_address(bound):
    first = bound(tcp(so_reuseport=True))
    port = first.sock.getsockname()[1]
    assert first.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    second = bound(replace(tcp(so_reuseport=True), port=port))
    assert second.sock.getsockname()[1] == port
    with pytest.raises(BindError, match="Address already in use"):
        sockets.bind(replace(tcp(), port=port))


def test_ipv6_loopback_answers_ipv6_only(bound):
    sock = bound(tcp("::1"))
    host, port = sock.sock.getsockname()[:2]
    assert sock.sock.family == socket.AF_INET6 and host == "::1"
    assert sock.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert sock.location() == f"[::1]:{port}"
    with socket.create_connection(("::1", port), timeout=5):
        pass
    assert bound(tcp("[::1]")).sock.family == socket.AF_INET6


def test_tcp_location_and_a_busy_port(bound):
    sock = bound(tcp())
    port = sock.sock.getsockname()[1]
    assert sock.location() == f"127.0.0.1:{port}"
    with pytest.raises(BindError) as caught:
        sockets.bind(replace(tcp(), port=port))
    assert str(caught.value) == (
        f"socket web: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_listening_sockets_are_non_blocking_unless_asked(tmp_path, bound):
    assert not os.get_blocking(bound(tcp()).fd)
    blocking = bound(unix(tmp_path, blocking=True))
    assert os.get_blocking(blocking.fd)
    sockets.adjust(blocking, replace(blocking.spec, blocking=False))
    assert not os.get_blocking(blocking.fd)


def test_descriptors_are_not_inherited_and_closed_reads_minus_one(bound):
    sock = bound(tcp())
    assert not os.get_inheritable(sock.fd)
    assert not sock.closed
    sock.close()
    assert sock.closed and sock.fd == -1


def test_an_adopted_descriptor_must_listen():
    loose = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(BindError, match="is not listening"):
            sockets.bind(SocketConfig(name="web", fd=loose.fileno()))
        # The check gave the descriptor back untouched.
        assert loose.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == 1
    finally:
        loose.close()
    with pytest.raises(BindError, match="not a socket"):
        sockets.bind(SocketConfig(name="web", fd=os.open(os.devnull, os.O_RDONLY)))


def test_unresolvable_host_is_one_line():
    with pytest.raises(BindError, match="cannot resolve"):
        sockets.bind(SocketConfig(name="web", host="no-such-host.invalid", port=0))


def test_connection_errors_are_not_mistaken_for_liveness(tmp_path):
    # A path nobody listens on is not live; ECONNREFUSED says so.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(OSError) as caught:
        probe.connect(str(tmp_path / "stale.sock"))
    probe.close()
    assert caught.value.errno == errno.ECONNREFUSED
    assert not sockets._is_live(str(tmp_path / "stale.sock"))
