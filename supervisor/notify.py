"""Readiness through the sd_notify protocol: one private socket per child.

Every process of a ``ready = notify`` watcher gets a NOTIFY_SOCKET of its
own, a datagram socket the arbiter binds in its runtime directory. The
child (the runner, ``redis-server --supervised systemd``, anything that
speaks the protocol) sends ``READY=1`` there once it serves; one socket per
child means a message can only come from that child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket


class NotifyChannel:
    """A private sd_notify socket for one child: it learns READY=1 here."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if not self.ready.done():
            self.ready.cancel()
