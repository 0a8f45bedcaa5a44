"""The wsgiref backend's stop: what it owes the connections it accepted.

- A connection accepted before SIGTERM whose request arrives after it is
  answered, with ``Connection: close``: a proxy writes its request right
  after connecting, and a close would reach its client as a 502.
- One that stays silent is closed after ``FRESH_GRACE``; it never holds the
  stop until ``graceful_timeout``.
- A connection the kernel signalled to this worker just as the stop began is
  accepted and answered: with EPOLLEXCLUSIVE no sibling is woken for it, and
  left in the backlog it would wait for the next client to connect.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import harness
import psutil

from juggler.backends.base import ServeOptions
from juggler.backends.wsgi11 import WsgiHandler
from juggler.backends.wsgiref import FRESH_GRACE, Server

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def accepted_one(runner: harness.RunnerProcess) -> bool:
    """Whether the runner holds a connection besides its listener."""
    assert runner.proc is not None and runner.sock is not None
    path = runner.sock.getsockname()
    found = psutil.Process(runner.proc.pid).net_connections(kind="unix")
    return sum(1 for c in found if c.laddr == path) >= 2


def stopping_with_a_silent_connection() -> tuple[harness.RunnerProcess, socket.socket]:
    """A runner told to stop while it holds an accepted, silent connection."""
    runner = harness.RunnerProcess("hello:app", backend="wsgiref", family="unix")
    runner.start()
    client = runner.connect()
    harness.wait_for(lambda: accepted_one(runner), message="connection accepted")
    runner.signal(signal.SIGTERM)
    runner.notify.wait_for("STOPPING=1")
    return runner, client


def test_a_request_sent_after_the_stop_on_an_accepted_connection_is_answered() -> None:
    runner, client = stopping_with_a_silent_connection()
    try:
        client.sendall(GET)
        reply = read_all(client)
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        assert b"\r\nConnection: close\r\n" in reply
        assert runner.wait(timeout=10) == 0
    finally:
        client.close()
        runner.stop()


def test_a_silent_connection_holds_the_stop_for_fresh_grace_only() -> None:
    runner, client = stopping_with_a_silent_connection()
    started = time.monotonic()
    try:
        # The runner's graceful_timeout is 30 s; the grace is far shorter.
        assert runner.wait(timeout=FRESH_GRACE + 10) == 0
        assert time.monotonic() - started < FRESH_GRACE + 5
        assert read_all(client) == b""
    finally:
        client.close()
        runner.stop()


def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Length", "2")])
    return [b"hi"]


def test_a_connection_signalled_as_the_stop_begins_is_served(tmp_path: Path) -> None:
    """The poller's steps, run by hand so that the stop lands between the
    poll that reported the connection and the accept."""
    path = str(tmp_path / "web.sock")
    listener = harness.bind_unix(path)
    options = ServeOptions()
    server = Server(
        listener,
        WsgiHandler(hello, options, listener),
        options,
        on_crash=lambda: None,
        wake_main=lambda: None,
    )
    server._update_listening()  # as each pass of the poller begins
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    try:
        client.connect(path)
        client.sendall(GET)
        assert [fd for fd, _ in server._epoll.poll(5)] == [listener.fileno()]
        server.stop()
        server._accept_ready()
        server._run()  # the poller's remaining passes, to its end
        reply = read_all(client)
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        assert b"\r\nConnection: close\r\n" in reply
    finally:
        client.close()
        for _ in server._threads:
            server._queue.put(None)
