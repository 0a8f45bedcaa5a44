"""The sd_notify sender against a real datagram socket."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from juggler.runner.notify import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.settimeout(10)
        yield sock


def test_ready_sends_ready_and_mainpid(receiver: socket.socket) -> None:
    assert Notifier(receiver.getsockname()).send("X=1")
    Notifier(receiver.getsockname()).ready()

    assert receiver.recv(4096) == b"X=1"
    assert receiver.recv(4096).decode().splitlines() == [
        "READY=1",
        f"MAINPID={os.getpid()}",
    ]


def test_stopping(receiver: socket.socket) -> None:
    Notifier(receiver.getsockname()).stopping()
    assert receiver.recv(4096) == b"STOPPING=1"


def test_abstract_address_with_at_sign() -> None:
    name = f"juggler-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        Notifier("@" + name).ready()
        assert sock.recv(4096).startswith(b"READY=1\n")


def test_from_environ_takes_the_variable_away(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())

    notifier = Notifier.from_environ()

    assert "NOTIFY_SOCKET" not in os.environ
    notifier.stopping()
    assert receiver.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_nothing_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier.from_environ().send("READY=1") is False


def test_unreachable_socket_is_a_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = str(tmp_path / "nobody-listens.sock")
    with caplog.at_level(logging.WARNING):
        assert Notifier(missing).send("READY=1") is False
    assert f"cannot notify {missing}" in caplog.text
