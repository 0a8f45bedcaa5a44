"""The listening sockets the arbiter binds once and hands to its workers.

A socket is bound at start and kept open for the arbiter's whole life (or
until a reload changes its config), so a worker can die or be replaced while
connections keep queueing in the kernel backlog. Descriptors are created
non-inheritable; a worker receives only the sockets its watcher uses, through
``pass_fds``, at the same descriptor number the arbiter holds them at (which
is what ``$(circus.sockets.NAME)`` expands to).

UNIX socket files are created with their final mode from the first instant:
the process umask is narrowed around ``bind()`` (the arbiter is a single
thread, so nothing else creates files meanwhile). Circus parsed the socket
``umask`` as a decimal number, which left sockets world-writable; ours is
octal, always.

A listening socket is non-blocking unless ``blocking = true``, as Circus
made it. The flag belongs to the open socket, which the arbiter and every
worker share: a worker that changes it changes it for its siblings too.

On a reload, a socket whose new config differs only in what a bound socket
can change (backlog, umask, blocking, replace) keeps its descriptor and is
changed in place (``adjust``); any other change binds a new socket first
and the old one is closed only once no worker uses it (``reload.py``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import replace

from juggler.supervisor.config_model import SocketConfig
from juggler.supervisor.errors import BindError

log = logging.getLogger("juggler.supervisor")


class BoundSocket:
    """One listening socket, and the config it was bound from."""

    def __init__(self, spec: SocketConfig, sock: socket.socket) -> None:
        self.spec = spec
        self.sock = sock
        # Only unlink a path on close if this process created it, and only
        # while the file there is still the one it created (a newer socket
        # may have been bound at the same path since).
        self.owns_path = spec.path is not None and spec.fd is None
        self._inode = _inode(spec.path) if self.owns_path else None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def fd(self) -> int:
        """The descriptor; -1 once closed."""
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        return self.sock.fileno() == -1

    def location(self) -> str:
        if self.sock.family == socket.AF_UNIX:
            return f"unix:{self.sock.getsockname() or self.spec.path}"
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        self.sock.close()
        path = self.spec.path
        if self.owns_path and path is not None and _inode(path) == self._inode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


# What a bound socket can change without being bound again.
ADJUSTABLE = ("backlog", "umask", "blocking", "replace")


def adjustable(old: SocketConfig, new: SocketConfig) -> bool:
    """Whether ``new`` differs from ``old`` only in ``ADJUSTABLE`` options
    (and the name: a renamed socket keeps its descriptor)."""
    kept = {key: getattr(old, key) for key in ADJUSTABLE}
    return replace(new, name=old.name, **kept) == old


def adjust(bound: BoundSocket, spec: SocketConfig) -> None:
    """Give a bound socket ``spec``'s backlog, mode and blocking flag.

    ``adjustable(bound.spec, spec)`` must hold. Calling ``listen()`` again
    on a listening socket sets its new backlog; connections already queued
    stay queued.
    """
    old = bound.spec
    try:
        bound.sock.listen(spec.backlog)
        bound.sock.setblocking(spec.blocking)
        if bound.owns_path and spec.path is not None and spec.umask != old.umask:
            os.chmod(spec.path, 0o777 & ~spec.umask)
    except OSError as exc:
        raise BindError(
            f"socket {spec.name}: cannot change {bound.location()}: {exc.strerror}"
        ) from None
    bound.spec = spec
    log.info(
        "adjusted: socket %s on %s fd=%d backlog=%d",
        spec.name,
        bound.location(),
        bound.fd,
        spec.backlog,
    )


def bind(spec: SocketConfig) -> BoundSocket:
    """Bind and listen as ``spec`` says; raise ``BindError`` with the cause."""
    if spec.fd is not None:
        sock = _adopt(spec)
    elif spec.path is not None:
        sock = _bind_unix(spec)
    else:
        sock = _bind_inet(spec)
    sock.set_inheritable(False)
    if spec.fd is None:  # an adopted socket keeps the mode its owner chose
        sock.setblocking(spec.blocking)
    bound = BoundSocket(spec, sock)
    log.info("bound: socket %s on %s fd=%d", spec.name, bound.location(), bound.fd)
    return bound


def _adopt(spec: SocketConfig) -> socket.socket:
    """Take over a listening descriptor we inherited (systemd, a wrapper)."""
    assert spec.fd is not None
    try:
        sock = socket.socket(fileno=spec.fd)
    except OSError as exc:
        raise BindError(
            f"socket {spec.name}: fd {spec.fd} is not a socket: {exc.strerror}"
        ) from None
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise BindError(f"socket {spec.name}: fd {spec.fd} is not listening")
    return sock


def _bind_inet(spec: SocketConfig) -> socket.socket:
    family = spec.family
    host = spec.host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, spec.port, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BindError(
            f"socket {spec.name}: cannot resolve {host}: {exc.strerror}"
        ) from None
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spec.so_reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if spec.interface:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_BINDTODEVICE, spec.interface.encode()
            )
        if family == socket.AF_INET6:
            # An IPv6 socket answers IPv6 only, as its address says.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(spec.backlog)
    except OSError as exc:
        sock.close()
        raise BindError(
            f"socket {spec.name}: cannot listen on {host}:{spec.port}: {exc.strerror}"
        ) from None
    return sock


def _bind_unix(spec: SocketConfig) -> socket.socket:
    assert spec.path is not None
    _clear_path(spec)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _umask(spec.umask):
            sock.bind(spec.path)
        sock.listen(spec.backlog)
    except OSError as exc:
        sock.close()
        raise BindError(
            f"socket {spec.name}: cannot listen on {spec.path}: {exc.strerror}"
        ) from None
    return sock


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _clear_path(spec: SocketConfig) -> None:
    """Remove a stale socket file; refuse a live one or a non-socket."""
    assert spec.path is not None
    try:
        mode = os.lstat(spec.path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise BindError(f"socket {spec.name}: {spec.path} exists and is not a socket")
    if _is_live(spec.path) and not spec.replace:
        raise BindError(
            f"socket {spec.name}: {spec.path} is in use by a live server "
            "(set replace = true to take it over)"
        )
    os.unlink(spec.path)


def _inode(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    return True
