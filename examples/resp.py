"""Just enough of the Redis protocol (RESP) for the stack example.

The example needs no client library: a command is an array of bulk strings,
and the replies it uses are simple strings, integers, bulk strings and
arrays of them.
"""

from __future__ import annotations

import socket


class Redis:
    """A blocking connection to a Redis server on a UNIX socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")

    def call(self, *words: str) -> object:
        parts = [f"*{len(words)}\r\n".encode()]
        for word in words:
            data = word.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self._reply()

    def _reply(self) -> object:
        line = self.reader.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.reader.read(size + 2)[:-2]
            return data.decode()
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()
