"""Readiness through the sd_notify protocol: one private socket per child.

Every process of a ``ready = notify`` watcher gets a NOTIFY_SOCKET of its
own, a datagram socket the arbiter binds before the fork. The child (the
runner, ``redis-server --supervised systemd``, anything that speaks the
protocol) sends ``READY=1`` there once it serves.

Who may send. Sending to a UNIX socket takes search permission on every
folder of its path and write permission on the socket file. The arbiter's
runtime directory is 0711 (``make_runtime_dir``): anyone may pass through,
nobody else may list it. In it each child has a folder of its own, 0700,
holding its socket, 0600; both belong to the user the child runs as
(``uid``), so a child that dropped privileges can still announce itself,
and no other user can send a READY=1 in its name. The folder is owned by
root until the socket in it is ready, so nobody can reach the socket while
its mode is being set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile

SOCKET_NAME = "notify"


def make_runtime_dir() -> str:
    """A new folder for the notify sockets: 0711, searchable but not
    listable by others (the folders in it are private to their child)."""
    path = tempfile.mkdtemp(prefix="juggler-")
    os.chmod(path, 0o711)
    return path


class NotifyChannel:
    """A private sd_notify socket for one child: it learns READY=1 here.

    ``directory`` is made for this child alone and removed with the socket;
    with ``uid`` (and ``gid``) both are given to the user the child runs as.
    Raises ``OSError`` if it cannot be made (the path is too long for a
    UNIX socket, the runtime directory is gone).
    """

    def __init__(
        self, directory: str, *, uid: int | None = None, gid: int | None = None
    ) -> None:
        self.directory = directory
        self.path = os.path.join(directory, SOCKET_NAME)
        os.mkdir(directory, 0o700)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(self.path)
            os.chmod(self.path, 0o600)
            if uid is not None:
                os.chown(self.path, uid, -1 if gid is None else gid)
                os.chown(directory, uid, -1 if gid is None else gid)
        except OSError:
            self.sock.close()
            self._remove_files()
            raise
        self.sock.setblocking(False)
        self.ready = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._on_message)

    def _on_message(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while True:
                data = self.sock.recv(4096)
                lines = data.decode(errors="replace").splitlines()
                if "READY=1" in lines and not self.ready.done():
                    self.ready.set_result(None)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
        self._remove_files()
        if not self.ready.done():
            self.ready.cancel()

    def _remove_files(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        # OSError: the child left files of its own there; the runtime
        # directory is removed whole at shutdown.
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)
