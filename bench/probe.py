"""One GET on a fresh connection, straight to a configuration's socket.

The answer's ``X-Pid`` header tells which worker served it.
"""

from __future__ import annotations

import socket


def address_family(address: str | tuple[str, int]) -> socket.AddressFamily:
    return socket.AF_UNIX if isinstance(address, str) else socket.AF_INET


def get(
    address: str | tuple[str, int], path: str = "/", timeout: float = 5.0
) -> tuple[int, int | None]:
    """(status, X-Pid) of one GET; OSError when nothing answers."""
    with socket.socket(address_family(address), socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(address)
        request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        client.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
    return parse_head(data)


def parse_head(data: bytes) -> tuple[int, int | None]:
    """Status and X-Pid of a response head; OSError if it is not HTTP."""
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP answer: {lines[0][:60]!r}")
    pid = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-pid" and value.strip().isdigit():
            pid = int(value.strip())
    return int(parts[1]), pid


def answers(address: str | tuple[str, int]) -> bool:
    """True once a GET / gets a 200."""
    try:
        return get(address, timeout=2.0)[0] == 200
    except OSError:
        return False
