"""A small HTTP/1.x client over one raw socket, for exchanges where framing
matters: keep-alive, pipelining, chunked bodies, malformed requests.

http.client wraps each response in its own buffered reader, which may swallow
the start of the next pipelined response; here one reader lives as long as
the connection, so responses are read back to back from the same bytes.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_LINE = 65536
Header = tuple[str | bytes, str | bytes]


class ConnectionClosed(Exception):
    """The server closed the connection where a response was expected."""


@dataclass
class Response:
    """One parsed response; header names are kept as sent, values latin-1."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ",".join(values) if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        """Whether the server said it will close the connection after this."""
        value = (self.header("Connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" not in value
        return "close" in value


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def build_request(
    method: str,
    target: str,
    headers: Sequence[Header] = (),
    body: bytes | None = None,
    *,
    version: str = "HTTP/1.1",
    host: str = "localhost",
) -> bytes:
    """The bytes of one request; Content-Length is added for a body."""
    lines = [f"{method} {target} {version}".encode(), b"Host: " + host.encode()]
    lines += [_as_bytes(name) + b": " + _as_bytes(value) for name, value in headers]
    names = {_as_bytes(name).lower() for name, _ in headers}
    if body is not None and b"transfer-encoding" not in names:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def chunked(parts: Iterable[bytes]) -> bytes:
    """Encode ``parts`` as a chunked body, with the closing zero chunk."""
    out = [b"%x\r\n%s\r\n" % (len(part), part) for part in parts if part]
    return b"".join(out) + b"0\r\n\r\n"


class Connection:
    """One client connection; responses are read in order from one buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._file = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[Header] = (),
        body: bytes | None = None,
        **kwargs: Any,
    ) -> Response:
        self.send(build_request(method, target, headers, body, **kwargs))
        return self.read_response(method)

    def read_response(self, method: str = "GET") -> Response:
        version, status, reason = self._status_line()
        headers = self._headers()
        response = Response(version, status, reason, headers, b"", False)
        if method == "HEAD" or status in (204, 304) or status < 200:
            return response
        if "chunked" in (response.header("Transfer-Encoding") or "").lower():
            response.chunked = True
            response.body = self._chunked_body()
        elif response.header("Content-Length") is not None:
            response.body = self._exactly(int(response.header("Content-Length") or 0))
        else:
            response.body = self._file.read()  # delimited by the close
        return response

    def at_eof(self) -> bool:
        """Whether the server closed its side (it sends nothing more)."""
        try:
            return self._file.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- parsing ----------------------------------------------------------
    def _line(self) -> bytes:
        line = self._file.readline(MAX_LINE)
        if not line:
            raise ConnectionClosed("connection closed by the server")
        if not line.endswith(b"\n"):
            raise ValueError(f"line too long or cut: {line[:80]!r}")
        return line.rstrip(b"\r\n")

    def _status_line(self) -> tuple[str, int, str]:
        line = self._line().decode("latin-1")
        version, status, *reason = line.split(" ", 2)
        if not version.startswith("HTTP/"):
            raise ValueError(f"not a status line: {line!r}")
        return version, int(status), reason[0] if reason else ""

    def _headers(self) -> list[tuple[str, str]]:
        headers = []
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name, value.strip()))
        return headers

    def _chunked_body(self) -> bytes:
        parts = []
        while True:
            size = int(self._line().split(b";", 1)[0], 16)
            if size == 0:
                break
            parts.append(self._exactly(size))
            if self._line():
                raise ValueError("chunk not followed by CRLF")
        while self._line():  # trailers
            pass
        return b"".join(parts)

    def _exactly(self, size: int) -> bytes:
        data = self._file.read(size)
        if len(data) != size:
            raise ConnectionClosed(f"body cut after {len(data)} of {size} bytes")
        return data
