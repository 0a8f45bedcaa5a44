"""The control channel: a small JSON protocol on a socket no stranger reaches.

The protocol is documented for client authors in ``docs/protocol.md``; in
short: one JSON object per ``\\n``-terminated line, requests of at most
``MAX_FRAME`` bytes, ``{"id", "command", "args", "token"}`` in and
``{"id", "ok", "result" | "error"}`` out. Replies come as their commands
finish, not in request order: a client matches them by ``id``.
``{"command": "events"}`` turns the connection into an event stream (the
topics are listed in ``events.TOPICS``); a subscriber that reads too
slowly loses the oldest events and is told ``{"dropped": N}``.

Who may connect. By default a UNIX socket of mode 0600 in a directory of
mode 0700, and the peer's uid (SO_PEERCRED) must be ours, root's or one of
``allowed_uids``. TCP only when the config asks for it, and then every
request must carry the token (compared in constant time) that
``endpoint.py`` reads from, or generates into, a private file.

Each request runs as its own task, so a ``stop`` waiting 30 s for a
graceful timeout never delays ``status`` or another watcher's commands.
A connection has at most ``MAX_IN_FLIGHT`` requests running; further ones
wait in the socket until one ends. A TCP peer must send an authenticated
request within ``AUTH_TIMEOUT`` and at most ``MAX_TCP_CONNECTIONS`` are
served at once.
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
MAX_IN_FLIGHT = 16
# TCP: a stranger holding connections open without the token is cut off.
AUTH_TIMEOUT = 10.0
MAX_TCP_CONNECTIONS = 100

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
        auth_timeout: float = AUTH_TIMEOUT,
    ) -> None:
        self._handler = handler
        self._events = events
        self._token = token
        self._allowed_uids = allowed_uids | {os.getuid(), 0}
        self._auth_timeout = auth_timeout
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._tcp = False

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
        self._tcp = True
        self._server = await asyncio.start_server(
            self._serve_client, host, port, limit=MAX_FRAME
        )
        log.info("control: listening on tcp:%s:%d (token required)", host, port)

    @property
    def addresses(self) -> list[Any]:
        """Where it listens (a TCP port of 0 becomes the port bound)."""
        if self._server is None:
            return []
        return [sock.getsockname() for sock in self._server.sockets]

    async def close(self) -> None:
        """Stop listening and end every connection (requests still running
        finish on their own; their replies go nowhere)."""
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
                await Connection(
                    self._handler,
                    self._events,
                    reader,
                    writer,
                    token=self._token,
                    auth_timeout=self._auth_timeout,
                ).serve()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() at shutdown. Ending normally, not as cancelled: the
            # stream machinery logs a cancelled handler as an error.
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    def _peer_allowed(self, writer: asyncio.StreamWriter) -> bool:
        sock: socket.socket = writer.get_extra_info("socket")
        if sock.family != socket.AF_UNIX:
            # TCP peers prove themselves with the token, a few at a time.
            if len(self._clients) <= MAX_TCP_CONNECTIONS:
                return True
            log.warning(
                "control: refused %s: %d connections already",
                writer.get_extra_info("peername"),
                MAX_TCP_CONNECTIONS,
            )
            writer.write(b'{"ok": false, "error": "too many connections"}\n')
            return False
        creds = sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
        pid, uid, _ = struct.unpack("3i", creds)
        if uid in self._allowed_uids:
            return True
        log.warning("control: refused pid=%d uid=%d (not allowed)", pid, uid)
        return False


class Connection:
    """One client: its requests, each run as a task, and their replies."""

    def __init__(
        self,
        handler: Handler,
        events: EventBus,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        token: str | None,
        auth_timeout: float,
    ) -> None:
        self.handler = handler
        self.events = events
        self.reader = reader
        self.writer = writer
        self.token = token
        self.auth_timeout = auth_timeout
        self.lock = asyncio.Lock()  # one reply line at a time
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.pending: set[asyncio.Task[None]] = set()
        # Until a request carries the token, the clock runs (TCP only).
        self.auth_deadline: float | None = None
        if token is not None:
            self.auth_deadline = asyncio.get_running_loop().time() + auth_timeout

    async def serve(self) -> None:
        await self._read_requests()
        # The client hung up (or was cut off): the replies still due are
        # written as their commands end. When close() cancels us instead,
        # the commands go on running on their own.
        if self.pending:
            await asyncio.wait(self.pending)

    async def _read_requests(self) -> None:
        while True:
            line = await self._next_line()
            if not line:
                return
            request = self._parse(line)
            if isinstance(request, str):
                await self.send({"ok": False, "error": request})
                continue
            self.auth_deadline = None
            if request["command"] == "events":
                if self.pending:
                    await asyncio.wait(self.pending)
                await self._stream_events(request)
                return
            await self.slots.acquire()  # excess requests wait in the socket
            task = asyncio.ensure_future(self._answer(request))
            self.pending.add(task)
            task.add_done_callback(self._done)

    async def _next_line(self) -> bytes:
        """The next frame; b"" when the connection should end."""
        timeout = IDLE_TIMEOUT
        if self.auth_deadline is not None:
            timeout = self.auth_deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self.reader.readline(), max(0, timeout))
        except (ValueError, asyncio.LimitOverrunError):
            await self.send({"ok": False, "error": "frame too large"})
        except TimeoutError:
            if self.auth_deadline is not None:
                await self.send(
                    {
                        "ok": False,
                        "error": "unauthorized: no token "
                        f"within {self.auth_timeout:g}s",
                    }
                )
        return b""

    def _done(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        self.slots.release()

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
        if self.token is not None and not _token_matches(
            request.get("token"), self.token
        ):
            return "unauthorized: missing or wrong token"
        return request

    async def _answer(self, request: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            command, args = request["command"], request["args"]
            reply["result"] = await self.handler(command, args)
            reply["ok"] = True
        except CommandError as exc:
            reply.update(ok=False, error=str(exc))
        except Exception as exc:
            log.exception("control: %s failed", request["command"])
            reply.update(ok=False, error=f"internal error: {exc}")
        # The client may have gone while the command ran: nothing to tell.
        with contextlib.suppress(ConnectionError):
            await self.send(reply)

    async def _stream_events(self, request: dict[str, Any]) -> None:
        queue: asyncio.Queue[Event] = asyncio.Queue(EVENT_QUEUE)
        dropped = 0

        def enqueue(event: Event) -> None:
            nonlocal dropped
            if queue.full():
                queue.get_nowait()
                dropped += 1
            queue.put_nowait(event)

        unsubscribe = self.events.subscribe(enqueue)
        log.debug("control: events subscriber added")
        try:
            await self.send({"id": request.get("id"), "ok": True})
            while True:
                event = await queue.get()
                if dropped:
                    await self.send({"dropped": dropped})
                    dropped = 0
                await self.send({"event": event})
        finally:
            unsubscribe()

    async def send(self, reply: Any) -> None:
        async with self.lock:
            self.writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await self.writer.drain()


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
