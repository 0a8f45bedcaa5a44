"""A blocking client of the control channel, for the CLI and for scripts.

with Client(endpoint.parse(None)) as client:
    print(client.call("status"))

Every failure of the channel itself (the daemon went away, it did not
answer in time, its reply is not a frame) is a ``ControlError`` whose
message is one line, so that the CLI never shows a traceback.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from juggler.supervisor import endpoint as endpoints
from juggler.supervisor.endpoint import Endpoint
from juggler.supervisor.errors import SupervisorError

# Replies are not held to the request cap (MAX_FRAME): a status of many
# processes or a watcher's long cmd may exceed it. This cap only stops a
# runaway peer from filling the client's memory.
MAX_REPLY = 64 * 1024 * 1024
CONNECT_TIMEOUT = 10.0


class ControlError(SupervisorError):
    """The supervisor answered with an error, or the channel failed."""


class Client:
    """One connection to a running juggler.

    ``timeout`` bounds each wait for a reply (None: wait as long as the
    daemon works); connecting is bounded by ``CONNECT_TIMEOUT`` either way.
    """

    def __init__(
        self,
        where: Endpoint,
        *,
        token: str | None = None,
        timeout: float | None = 60.0,
        max_reply: int = MAX_REPLY,
    ) -> None:
        self.where = where
        self.token = token
        if token is None and where.kind == "tcp":
            self.token = _find_token(where)
        self.timeout = timeout
        self.max_reply = max_reply
        self.sock = _connect(where, min(timeout or CONNECT_TIMEOUT, CONNECT_TIMEOUT))
        self.sock.settimeout(timeout)
        self.reader = self.sock.makefile("rb")
        self._ids = itertools.count(1)
        self._waiting_for = "a reply"

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
        self._waiting_for = command
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise self._failure(exc, f"sending {command}") from None
        return int(request["id"])

    def receive(self) -> dict[str, Any]:
        """The next reply or event line, as a dict."""
        try:
            line = self.reader.readline(self.max_reply + 1)
        except OSError as exc:
            raise self._failure(exc, f"waiting for {self._waiting_for}") from None
        if not line:
            raise self._closed()
        if len(line) > self.max_reply:
            raise ControlError(
                f"reply from {self.where} exceeds {self.max_reply} bytes; not read"
            )
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise ControlError(f"malformed reply from {self.where}: {exc}") from None
        if not isinstance(reply, dict):
            raise ControlError(f"malformed reply from {self.where}: not an object")
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
        self._waiting_for = "events"
        while True:
            yield self.receive()

    def _closed(self) -> ControlError:
        return ControlError(f"{self.where} closed the connection (juggler stopped?)")

    def _failure(self, exc: OSError, doing: str) -> ControlError:
        if isinstance(exc, TimeoutError):
            return ControlError(
                f"timed out after {self.timeout:g}s {doing}; raise --timeout"
            )
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            return self._closed()
        return ControlError(f"{doing} on {self.where}: {exc.strerror or exc}")


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
