"""The runner's listening socket: inherited by descriptor, or bound here.

An inherited descriptor is trusted for nothing: ``socket.socket(fileno=fd)``
asks the kernel for its family and type, and we check that it is a stream
socket that is already listening before any backend sees it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from juggler.runner.errors import BindError

FAMILY_NAMES: dict[int, str] = {
    socket.AF_INET: "AF_INET",
    socket.AF_INET6: "AF_INET6",
    socket.AF_UNIX: "AF_UNIX",
}
TYPE_NAMES: dict[int, str] = {
    socket.SOCK_STREAM: "SOCK_STREAM",
    socket.SOCK_DGRAM: "SOCK_DGRAM",
    socket.SOCK_RAW: "SOCK_RAW",
    socket.SOCK_RDM: "SOCK_RDM",
    socket.SOCK_SEQPACKET: "SOCK_SEQPACKET",
}


def inherit(
    fd: int,
    *,
    expect_family: int | None = None,
    expect_type: int | None = None,
) -> socket.socket:
    """Adopt the listening socket on descriptor ``fd``."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(_unusable_fd_reason(fd, exc)) from None

    family_name = FAMILY_NAMES.get(sock.family, str(sock.family))
    if sock.type != socket.SOCK_STREAM:
        type_name = TYPE_NAMES.get(sock.type, str(sock.type))
        _release(sock)
        raise BindError(f"fd {fd} is a {type_name} socket, not a stream socket")
    if sock.family not in FAMILY_NAMES:
        _release(sock)
        raise BindError(f"fd {fd} is a {family_name} socket, not TCP or UNIX")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        _release(sock)
        raise BindError(
            f"fd {fd} is a {family_name} socket that is not listening "
            "(the parent must bind() and listen() before passing it)"
        )
    _check_expected(fd, sock, expect_family, expect_type)
    sock.set_inheritable(False)
    return sock


def _unusable_fd_reason(fd: int, exc: OSError) -> str:
    if exc.errno == errno.EBADF:
        return f"fd {fd} is not open (was it passed to this process?)"
    if exc.errno == errno.ENOTSOCK:
        with contextlib.suppress(OSError):
            mode = os.fstat(fd).st_mode
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a file or device"
            return f"fd {fd} is {kind}, not a socket"
        return f"fd {fd} is not a socket"
    return f"fd {fd} cannot be used as a socket: {exc.strerror}"


def _check_expected(
    fd: int, sock: socket.socket, family: int | None, type_: int | None
) -> None:
    if family is not None and sock.family != family:
        actual = FAMILY_NAMES.get(sock.family, str(sock.family))
        wanted = FAMILY_NAMES.get(family, str(family))
        _release(sock)
        raise BindError(
            f"fd {fd} is an {actual} socket but --address-family {wanted} was given"
        )
    if type_ is not None and sock.type != type_:
        wanted = TYPE_NAMES.get(type_, str(type_))
        _release(sock)
        raise BindError(
            f"fd {fd} is a SOCK_STREAM socket but --socket-type {wanted} was given"
        )


def _release(sock: socket.socket) -> None:
    """Forget an unfit inherited socket without closing the descriptor."""
    sock.detach()


def bind_tcp(host: str, port: int, backlog: int) -> socket.socket:
    """Bind and listen on ``host:port`` (IPv6 when ``host`` is an IPv6 one)."""
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(f'cannot resolve host "{host}": {exc.strerror}') from None
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def bind_unix(path: str, backlog: int) -> socket.socket:
    """Bind and listen on a UNIX socket path, replacing a stale socket file."""
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


class OwnSocketFile:
    """The file of a UNIX socket this process bound, removed once it is done
    with it -- unless another socket has taken the path since (a new runner
    started while this one drained)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.inode = os.lstat(path).st_ino

    def remove(self) -> None:
        try:
            if os.lstat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise BindError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: a leftover of a dead process
        return
    finally:
        probe.close()
    raise BindError(f"{path} is in use by another live server")


def describe(sock: socket.socket) -> str:
    """A short human name for a listening socket: ``tcp 127.0.0.1:8000``."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix {address or '(unnamed)'}"
    if sock.family == socket.AF_INET6:
        return f"tcp [{address[0]}]:{address[1]}"
    return f"tcp {address[0]}:{address[1]}"
