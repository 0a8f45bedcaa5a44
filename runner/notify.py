"""The sd_notify readiness protocol, sender side.

When ``NOTIFY_SOCKET`` names a UNIX datagram socket (a path, or an abstract
name written with a leading ``@``), the runner sends ``READY=1`` once the app
is loaded and the socket is being served, and ``STOPPING=1`` when draining
begins. juggler, systemd and anything else that speaks the protocol can then
wait for a worker that is really up.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends state lines to the supervisor; a no-op without NOTIFY_SOCKET."""

    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None

    @classmethod
    def from_environ(cls) -> Notifier:
        """Read NOTIFY_SOCKET and remove it, so the app's children lack it."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    def send(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False if it failed."""
        if self.address is None:
            return False
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self.address)
        except OSError as exc:
            # Readiness is advisory: serving matters more than reporting it.
            log.warning("cannot notify %s: %s", self.address, exc.strerror)
            return False
        return True

    def ready(self) -> None:
        self.send("READY=1", f"MAINPID={os.getpid()}")

    def stopping(self) -> None:
        self.send("STOPPING=1")
