"""Small helpers for talking to a control socket without the CLI."""

from __future__ import annotations

import json
import socket
from typing import Any

from harness import DEFAULT_DEADLINE, SupervisorProcess


def control_path(sup: SupervisorProcess) -> str:
    return sup.endpoint.removeprefix("unix://")


def raw_exchange(path: str, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes on the control socket; return all that comes back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(path)
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    return data


def ask(path: str, command: str, **args: Any) -> dict[str, Any]:
    """One request on a fresh connection; the decoded reply."""
    payload = json.dumps({"command": command, "args": args}).encode() + b"\n"
    reply: dict[str, Any] = json.loads(
        raw_exchange(path, payload, timeout=DEFAULT_DEADLINE)
    )
    return reply


def free_port() -> int:
    """A TCP port free a moment ago (for a config's tcp:// endpoint)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
