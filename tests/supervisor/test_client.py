"""The control client against a real socket whose peer misbehaves."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import tempfile
import threading
from collections.abc import Iterator

import pytest

from juggler.supervisor.client import Client, ControlError
from juggler.supervisor.ctl import DEFAULT_TIMEOUT, reply_timeout
from juggler.supervisor.endpoint import Endpoint


@pytest.fixture
def peer() -> Iterator[tuple[Endpoint, queue.Queue[bytes]]]:
    """A UNIX socket that reads one request and answers with the next
    canned bytes, then closes."""
    directory = tempfile.mkdtemp(prefix="juggler-client-")
    path = os.path.join(directory, "c.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    answers: queue.Queue[bytes] = queue.Queue()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as requests:
            requests.readline()
            answer = answers.get(timeout=10)
            with contextlib.suppress(BrokenPipeError):  # the client gave up
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield Endpoint("unix", path=path), answers
    listener.close()
    thread.join(timeout=5)
    os.unlink(path)
    os.rmdir(directory)


def test_a_reply_over_the_cap_is_refused_in_one_line(peer):
    where, answers = peer
    answers.put(b'{"ok": true, "result": "' + b"x" * 2000 + b'"}\n')
    with (
        Client(where, timeout=5, max_reply=1000) as client,
        pytest.raises(ControlError, match="exceeds 1000 bytes"),
    ):
        client.call("status")


def test_a_reply_under_the_cap_is_read_whole(peer):
    where, answers = peer
    answers.put(b'{"ok": true, "result": "' + b"x" * 200_000 + b'"}\n')
    with Client(where, timeout=5) as client:
        assert client.call("status") == "x" * 200_000


def test_a_malformed_reply_is_a_control_error(peer):
    where, answers = peer
    answers.put(b"{not json\n")
    with (
        Client(where, timeout=5) as client,
        pytest.raises(ControlError, match="malformed reply from unix://"),
    ):
        client.call("status")


def test_a_peer_that_hangs_up_is_a_control_error(peer):
    where, answers = peer
    answers.put(b"")
    with (
        Client(where, timeout=5) as client,
        pytest.raises(ControlError, match="closed the connection"),
    ):
        client.call("status")


def test_a_silent_peer_times_out_naming_the_command(peer):
    where, answers = peer
    with Client(where, timeout=0.2) as client, pytest.raises(ControlError) as caught:
        client.call("numwatchers")
    assert str(caught.value) == (
        "timed out after 0.2s waiting for numwatchers; raise --timeout"
    )
    answers.put(b"")  # let the peer finish


def test_long_commands_have_no_default_deadline():
    for command in ("stop", "restart", "reload", "quit", "reloadconfig", "rm"):
        assert reply_timeout(command, None) is None
    assert reply_timeout("status", None) == DEFAULT_TIMEOUT
    assert reply_timeout("stop", 2.0) == 2.0
