"""The control channel: a small JSON protocol on a socket no stranger reaches.

Transport. One JSON object per line (UTF-8, ``\\n``-terminated), at most
``MAX_FRAME`` bytes. A client sends requests and reads one response per
request, in order::

    -> {"id": 1, "command": "status", "args": {"name": "web"}}
    <- {"id": 1, "ok": true, "result": {...}}
    <- {"id": 2, "ok": false, "error": "no watcher named \\"wbe\\""}

``{"command": "events"}`` turns the connection into an event stream: every
event (spawn, ready, exit, flapping, state, reload) follows as
``{"event": {...}}`` lines until the client hangs up. A subscriber that
reads too slowly loses the oldest events (its queue is bounded) and is told
how many with ``{"dropped": N}``; it never holds the arbiter back.

Who may connect. By default a UNIX socket of mode 0600 in a directory of
mode 0700, and the peer's uid (SO_PEERCRED) must be ours or root's. TCP only
when the config asks for it, and then every request must carry the token
(compared in constant time) that ``tokens.py`` keeps in a private file.

Each request runs as its own task, so a ``stop`` waiting 30 s for a
graceful timeout never delays ``status`` or another watcher's commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from juggler.supervisor.endpoint import check_private_dir
from juggler.supervisor.events import Event, EventBus

log = logging.getLogger("juggler.supervisor.control")

MAX_FRAME = 64 * 1024
EVENT_QUEUE = 1000
# A client that sends nothing for this long is disconnected.
IDLE_TIMEOUT = 300.0

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class CommandError(Exception):
    """A request that cannot be done: its message is the reply's error."""


class ControlServer:
    """Accepts control connections and dispatches their requests."""

    def __init__(
        self,
        handler: Handler,
        events: EventBus,
        *,
        token: str | None = None,
        allowed_uids: frozenset[int] = frozenset(),
    ) -> None:
        self._handler = handler
        self._events = events
        self._token = token
        self._allowed_uids = allowed_uids | {os.getuid(), 0}
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def listen_unix(self, path: str, *, owner: int | None = None) -> None:
        """Listen on ``path``, in a directory only we can enter.

        Others come in only when the config says so. ``owner``
        (``endpoint_owner``) is given the socket file, still mode 0600.
        The other ``allowed_uids`` must open it too: the file is then 0666
        and the peer check (SO_PEERCRED) is what turns strangers away.
        Either way its directory becomes 0711, so that one may reach the
        file by name but neither list the directory nor create in it.
        """
        me = os.getuid()
        owner = None if owner == me else owner
        if owner is not None:
            self._allowed_uids |= {owner}
        guests = bool(self._allowed_uids - {me, 0, owner})
        shared = guests or owner is not None
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        check_private_dir(directory, search_ok=shared)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old_umask = os.umask(0o177)  # the socket file is born 0600
        try:
            self._server = await asyncio.start_unix_server(
                self._serve_client, path, limit=MAX_FRAME
            )
        finally:
            os.umask(old_umask)
        if guests:
            os.chmod(path, 0o666)
        if owner is not None:
            _give_to(path, owner)
        if shared:
            os.chmod(directory, 0o711)
        log.info("control: listening on unix:%s", path)

    async def listen_tcp(self, host: str, port: int) -> None:
        if self._token is None:
            raise ValueError("a TCP control endpoint needs a token")
        self._server = await asyncio.start_server(
            self._serve_client, host, port, limit=MAX_FRAME
        )
        log.info("control: listening on tcp:%s:%d (token required)", host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    # -- one connection ------------------------------------------------------

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if self._peer_allowed(writer):
                await self._requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    def _peer_allowed(self, writer: asyncio.StreamWriter) -> bool:
        sock: socket.socket = writer.get_extra_info("socket")
        if sock.family != socket.AF_UNIX:
            return True  # TCP peers prove themselves with the token
        creds = sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
        pid, uid, _ = struct.unpack("3i", creds)
        if uid in self._allowed_uids:
            return True
        log.warning("control: refused pid=%d uid=%d (not allowed)", pid, uid)
        return False

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        pending: set[asyncio.Task[None]] = set()
        lock = asyncio.Lock()  # one response line at a time
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
            except (ValueError, asyncio.LimitOverrunError):
                await _send(writer, lock, {"ok": False, "error": "frame too large"})
                return
            except TimeoutError:
                return
            if not line:
                break
            request = self._parse(line)
            if isinstance(request, str):
                await _send(writer, lock, {"ok": False, "error": request})
                continue
            if request["command"] == "events":
                await asyncio.gather(*pending)
                await self._stream_events(request, writer, lock)
                return
            task = asyncio.ensure_future(self._answer(request, writer, lock))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)

    def _parse(self, line: bytes) -> dict[str, Any] | str:
        """The request, or the error to answer with."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            return "malformed frame: not JSON"
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return 'malformed request: expected {"command": NAME, "args": {...}}'
        if not isinstance(request.setdefault("args", {}), dict):
            return "malformed request: args must be an object"
        if self._token is not None and not _token_matches(
            request.get("token"), self._token
        ):
            return "unauthorized: missing or wrong token"
        return request

    async def _answer(
        self, request: dict[str, Any], writer: asyncio.StreamWriter, lock: asyncio.Lock
    ) -> None:
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            reply["result"] = await self._handler(request["command"], request["args"])
            reply["ok"] = True
        except CommandError as exc:
            reply.update(ok=False, error=str(exc))
        except Exception as exc:
            log.exception("control: %s failed", request["command"])
            reply.update(ok=False, error=f"internal error: {exc}")
        await _send(writer, lock, reply)

    async def _stream_events(
        self, request: dict[str, Any], writer: asyncio.StreamWriter, lock: asyncio.Lock
    ) -> None:
        queue: asyncio.Queue[Event] = asyncio.Queue(EVENT_QUEUE)
        dropped = 0

        def enqueue(event: Event) -> None:
            nonlocal dropped
            if queue.full():
                queue.get_nowait()
                dropped += 1
            queue.put_nowait(event)

        unsubscribe = self._events.subscribe(enqueue)
        log.debug("control: events subscriber added")
        try:
            await _send(writer, lock, {"id": request.get("id"), "ok": True})
            while True:
                event = await queue.get()
                if dropped:
                    await _send(writer, lock, {"dropped": dropped})
                    dropped = 0
                await _send(writer, lock, {"event": event})
        finally:
            unsubscribe()


async def _send(writer: asyncio.StreamWriter, lock: asyncio.Lock, reply: Any) -> None:
    async with lock:
        writer.write(json.dumps(reply, default=str).encode() + b"\n")
        await writer.drain()


def _token_matches(given: object, expected: str) -> bool:
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def _give_to(path: str, uid: int) -> None:
    try:
        os.chown(path, uid, -1)
    except PermissionError:
        raise PermissionError(
            f"endpoint_owner: cannot give {path} to uid {uid}: only root can "
            f"(juggler runs as uid {os.getuid()})"
        ) from None
