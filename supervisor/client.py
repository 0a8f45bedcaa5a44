"""A blocking client of the control channel, for the CLI and for scripts.

with Client(endpoint.parse(None)) as client:
    print(client.call("status"))
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from juggler.supervisor import endpoint as endpoints
from juggler.supervisor.control import MAX_FRAME
from juggler.supervisor.endpoint import Endpoint
from juggler.supervisor.errors import SupervisorError


class ControlError(SupervisorError):
    """The supervisor answered a request with an error."""


class Client:
    """One connection to a running juggler."""

    def __init__(
        self, where: Endpoint, *, token: str | None = None, timeout: float = 60.0
    ) -> None:
        self.where = where
        self.token = token
        if token is None and where.kind == "tcp":
            self.token = _find_token(where)
        self.sock = _connect(where, timeout)
        self.reader = self.sock.makefile("rb")
        self._ids = itertools.count(1)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, command: str, **args: Any) -> int:
        request: dict[str, Any] = {
            "id": next(self._ids),
            "command": command,
            "args": args,
        }
        if self.token is not None:
            request["token"] = self.token
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        return int(request["id"])

    def receive(self) -> dict[str, Any]:
        line = self.reader.readline(MAX_FRAME + 1)
        if not line:
            raise ControlError(f"{self.where} closed the connection")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, command: str, **args: Any) -> Any:
        """Send one request; return its result or raise ``ControlError``."""
        self.send(command, **args)
        reply = self.receive()
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error", "unknown error")))
        return reply.get("result")

    def events(self) -> Iterator[dict[str, Any]]:
        """Subscribe, then yield events as they come (forever)."""
        self.call("events")
        self.sock.settimeout(None)
        while True:
            yield self.receive()


def _connect(where: Endpoint, timeout: float) -> socket.socket:
    if where.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = where.path
    else:
        sock = socket.socket(
            socket.AF_INET6 if ":" in where.host else socket.AF_INET,
            socket.SOCK_STREAM,
        )
        address = (where.host, where.port)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise SupervisorError(
            f"cannot reach juggler at {where}: {exc.strerror or exc} "
            "(is it running? is --endpoint right?)"
        ) from None
    return sock


def _find_token(where: Endpoint) -> str | None:
    from_env = os.environ.get("JUGGLER_TOKEN")
    if from_env:
        return from_env
    path = endpoints.token_path(where)
    return endpoints.read_token(path) if os.path.exists(path) else None
