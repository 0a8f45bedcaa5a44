"""Request bodies, read from a connection's ``Reader`` as the app asks.

``body_for`` picks the reader a request's framing calls for: ``LengthBody``
for a Content-Length, ``ChunkedBody`` for the chunked transfer coding, or the
empty ``Body``. Each reads exactly its request's body from the shared buffer,
so bytes of a pipelined next request stay where the next head read finds
them. A malformed chunked body raises ``HttpError`` (400).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from juggler.backends.base import HeadLimits
from juggler.backends.http11 import FIELD_LINE, RECV_SIZE, HttpError, Reader, Request

# A chunk-size line, extensions included, longer than this is refused.
MAX_CHUNK_LINE = 4096

_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class Body:
    """A request body as the app reads it: the WSGI ``wsgi.input`` stream."""

    __slots__ = ("_pending", "_reader", "failed", "on_first_read")

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self._pending = b""  # read past a newline by readline()
        # Called once before the first read: sends "100 Continue".
        self.on_first_read: Callable[[], None] | None = None
        # Set when reading failed: the connection cannot be reused.
        self.failed = False

    @property
    def finished(self) -> bool:
        """Whether the whole body has been taken off the connection."""
        return True

    def _read_some(self, most: int) -> bytes:
        return b""

    def can_drain(self, limit: int) -> bool:
        """Whether what the app left unread may be read and discarded."""
        if self.failed:
            return False
        return self.finished or self.on_first_read is None

    def drain(self, limit: int) -> bool:
        """Discard up to ``limit`` unread bytes; True if the body ended."""
        if not self.can_drain(limit):
            return False
        try:
            while not self.finished and limit > 0:
                limit -= len(self._read_some(min(limit, RECV_SIZE)))
        except (HttpError, OSError):
            self.failed = True
        return self.finished and not self.failed

    def _start(self) -> None:
        callback, self.on_first_read = self.on_first_read, None
        if callback is not None:
            callback()

    def read(self, size: int | None = -1) -> bytes:
        if self.on_first_read is not None:
            self._start()
        try:
            return self._read(-1 if size is None else size)
        except BaseException:
            self.failed = True
            raise

    def _read(self, size: int) -> bytes:
        parts = [self._pending]
        got = len(self._pending)
        self._pending = b""
        while size < 0 or got < size:
            data = self._read_some(RECV_SIZE if size < 0 else size - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        data = b"".join(parts)
        if 0 <= size < len(data):
            data, self._pending = data[:size], data[size:]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        if self.on_first_read is not None:
            self._start()
        try:
            return self._readline(-1 if size is None else size)
        except BaseException:
            self.failed = True
            raise

    def _readline(self, size: int) -> bytes:
        parts = []
        got = 0
        while size < 0 or got < size:
            data, self._pending = self._pending, b""
            data = data or self._read_some(RECV_SIZE)
            if not data:
                break
            limit = len(data) if size < 0 else min(len(data), size - got)
            end = data.find(b"\n", 0, limit) + 1 or limit
            parts.append(data[:end])
            got += end
            self._pending = data[end:]
            if data[end - 1 : end] == b"\n":
                break
        return b"".join(parts)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class LengthBody(Body):
    """A body of a known length (Content-Length)."""

    __slots__ = ("_left",)

    def __init__(self, reader: Reader, length: int) -> None:
        super().__init__(reader)
        self._left = length

    @property
    def finished(self) -> bool:
        return self._left == 0

    def can_drain(self, limit: int) -> bool:
        return super().can_drain(limit) and self._left <= limit

    def _read_some(self, most: int) -> bytes:
        if not self._left:
            return b""
        data = self._reader.take(min(most, self._left))
        self._left -= len(data)
        return data


class ChunkedBody(Body):
    """A body in the chunked transfer coding, handed to the app de-chunked."""

    __slots__ = ("_done", "_left", "_limits")

    def __init__(self, reader: Reader, limits: HeadLimits) -> None:
        super().__init__(reader)
        self._limits = limits
        self._left = 0  # bytes left in the current chunk
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    def _read_some(self, most: int) -> bytes:
        if not self._left:
            if self._done:
                return b""
            self._next_chunk()
            if self._done:
                return b""
        data = self._reader.take(min(most, self._left))
        self._left -= len(data)
        if not self._left and self._reader.readline(MAX_CHUNK_LINE):
            raise HttpError(400, "chunk data longer than its size")
        return data

    def _next_chunk(self) -> None:
        line = self._reader.readline(MAX_CHUNK_LINE)
        size, semicolon, _ = line.partition(b";")
        if semicolon:  # whitespace may precede an extension (RFC 9112, 7.1.1)
            size = size.rstrip(b" \t")
        if not _CHUNK_SIZE.fullmatch(size):
            raise HttpError(400, "malformed chunk size")
        self._left = int(size, 16)
        if not self._left:
            self._skip_trailers()
            self._done = True

    def _skip_trailers(self) -> None:
        limits = self._limits
        for _ in range(limits.max_header_count + 1):
            line = self._reader.readline(limits.max_header_size)
            if not line:
                return
            if not FIELD_LINE.fullmatch(line):
                raise HttpError(400, "malformed trailer field")
        raise HttpError(400, "too many trailer fields")


def body_for(request: Request, reader: Reader, limits: HeadLimits) -> Body:
    """The body reader that the request's framing calls for."""
    if request.chunked:
        return ChunkedBody(reader, limits)
    if request.content_length:
        return LengthBody(reader, request.content_length)
    return Body(reader)
