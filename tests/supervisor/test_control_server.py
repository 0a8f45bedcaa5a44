"""The control server in this process, with real TCP clients: its limits.

The daemon's tests drive the same server end to end; these ones shorten
its timeouts and caps, which the daemon does not expose.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from juggler.supervisor import control
from juggler.supervisor.control import ControlServer
from juggler.supervisor.events import EventBus

TOKEN = "a-token-of-some-length"


async def serve(
    handler: Callable[[str, dict[str, Any]], Awaitable[Any]], **kwargs: Any
) -> tuple[ControlServer, int]:
    server = ControlServer(handler, EventBus(), token=TOKEN, **kwargs)
    await server.listen_tcp("127.0.0.1", 0)
    return server, server.addresses[0][1]


async def echo(command: str, args: dict[str, Any]) -> Any:
    return command


async def exchange(port: int, *requests: dict[str, Any]) -> list[Any]:
    """Send the requests, then read until the server hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for request in requests:
        writer.write(json.dumps(request).encode() + b"\n")
    replies = [json.loads(line) async for line in reader]
    writer.close()
    return replies


def run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 20))  # type: ignore[arg-type]


def test_a_tcp_peer_without_the_token_is_cut_off_after_auth_timeout():
    async def scenario() -> None:
        server, port = await serve(echo, auth_timeout=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A wrong token gets its error and does not stop the clock.
        replies = await exchange(port, {"command": "list", "token": "wrong"})
        assert replies == [
            {"ok": False, "error": "unauthorized: missing or wrong token"},
            {"ok": False, "error": "unauthorized: no token within 0.3s"},
        ]
        assert 0.25 < loop.time() - started < 10
        await server.close()

    run(scenario())


def test_an_authenticated_peer_is_not_cut_off():
    async def scenario() -> None:
        server, port = await serve(echo, auth_timeout=0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(json.dumps({"id": 1, "command": "a", "token": TOKEN}).encode())
        writer.write(b"\n")
        assert json.loads(await reader.readline())["result"] == "a"
        await asyncio.sleep(0.5)  # past auth_timeout: still connected
        writer.write(json.dumps({"id": 2, "command": "b", "token": TOKEN}).encode())
        writer.write(b"\n")
        assert json.loads(await reader.readline())["result"] == "b"
        writer.close()
        await server.close()

    run(scenario())


def test_requests_beyond_the_in_flight_cap_wait_and_are_all_answered():
    async def scenario() -> None:
        running = 0
        most = 0
        release = asyncio.Event()

        async def slow(command: str, args: dict[str, Any]) -> Any:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await release.wait()
            running -= 1
            return args["n"]

        server, port = await serve(slow)
        count = control.MAX_IN_FLIGHT + 5
        requests = [
            {"id": n, "command": "x", "args": {"n": n}, "token": TOKEN}
            for n in range(count)
        ]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
        while running < control.MAX_IN_FLIGHT:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the others have had time to start, if let
        assert most == control.MAX_IN_FLIGHT
        release.set()
        replies = [json.loads(await reader.readline()) for _ in range(count)]
        assert sorted(r["result"] for r in replies) == list(range(count))
        writer.close()
        await server.close()

    run(scenario())


def test_tcp_connections_beyond_the_cap_are_refused(monkeypatch):
    monkeypatch.setattr(control, "MAX_TCP_CONNECTIONS", 2)

    async def scenario() -> None:
        server, port = await serve(echo)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, writer in held:  # both are being served
            writer.write(json.dumps({"command": "a", "token": TOKEN}).encode())
            writer.write(b"\n")
            assert json.loads(await reader.readline())["ok"] is True
        # (It says so before reading a byte: a request sent meanwhile may
        # turn the hang-up into a reset.)
        assert await exchange(port) == [{"ok": False, "error": "too many connections"}]
        for _, writer in held:
            writer.close()
        await server.close()

    run(scenario())


@pytest.mark.parametrize("hang_up", ["at once", "after reading the error"])
def test_a_client_gone_before_its_reply_leaves_no_unretrieved_task(hang_up, caplog):
    async def scenario() -> None:
        done = asyncio.Event()

        async def slow(command: str, args: dict[str, Any]) -> Any:
            await asyncio.sleep(0.2)
            done.set()
            return "late"

        server, port = await serve(slow)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(json.dumps({"command": "x", "token": TOKEN}).encode() + b"\n")
        writer.write(b"x" * (control.MAX_FRAME + 10) + b"\n")
        if hang_up == "after reading the error":
            assert json.loads(await reader.readline())["error"] == "frame too large"
        writer.close()
        await done.wait()
        await asyncio.sleep(0.05)  # the reply's task ends
        await server.close()

    run(scenario())
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
