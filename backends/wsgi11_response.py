"""The WSGI response: ``start_response``, ``write`` and HTTP/1.1 framing.

``Response`` checks what the app passes to ``start_response`` (a status of
200-599 with a reason, header names that are tokens, values without control
characters, no hop-by-hop fields), then frames the body the app returns:
with its Content-Length when the app set one or returned a list or tuple,
chunked for a streamed body on HTTP/1.1, or up to the connection's close on
HTTP/1.0. ``FileWrapper`` is ``wsgi.file_wrapper``: a real file sent with a
Content-Length goes out with sendfile().
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from juggler.backends.http11 import (
    ClientDisconnected,
    Request,
    date_field,
    error_response,
)
from juggler.backends.http11_body import Body

if TYPE_CHECKING:
    from juggler.backends.wsgi11 import WsgiHandler

# The backend's logger: these lines belong to the wsgiref backend.
log = logging.getLogger("juggler.backends.wsgiref")

# Request body the app left unread that a worker reads and discards to keep
# the connection; past this it closes the connection instead.
DRAIN_LIMIT = 64 * 1024
# Below this size the response head and the first body chunk are joined and
# written with one system call; above it, copying would cost more.
SMALL_WRITE = 64 * 1024

_STATUS = re.compile(r"[2-5]\d\d [\t\x20-\x7e\x80-\xff]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# PEP 3333 leaves these to the server; an app that sets them is refused.
_HOP_BY_HOP = frozenset(
    ("keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade")
)
_SPECIAL = _HOP_BY_HOP | {"connection", "content-length", "date"}


class Response:
    """One response: ``start_response``, ``write`` and the framing."""

    __slots__ = (
        "_bodyless",
        "_chunked",
        "_close",
        "_dated",
        "_fields",
        "_handler",
        "_left",
        "_length",
        "_request",
        "_sock",
        "body",
        "keep_alive",
        "started",
        "status",
    )

    def __init__(
        self, sock: socket.socket, request: Request, body: Body, handler: WsgiHandler
    ) -> None:
        self._sock = sock
        self._request = request
        self.body = body
        self._handler = handler  # its closing flag says "Connection: close"
        self.status: str | None = None
        self._fields = ""  # the app's header lines
        self._length: int | None = None  # the app's Content-Length
        self._close = False  # the app said "Connection: close"
        self._dated = False  # the app set Date
        self.started = False  # the head has been sent
        self.keep_alive = request.keep_alive
        self._bodyless = False
        self._chunked = False
        self._left: int | None = None  # body bytes the framing still allows

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        """The WSGI ``start_response`` callable (PEP 3333)."""
        if exc_info is not None:
            try:
                if self.started:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response() called twice without exc_info")
        if type(status) is not str or not _STATUS.fullmatch(status):
            raise ValueError(
                f"invalid status {status!r} (expected a code 200-599 and a "
                "reason, like '200 OK')"
            )
        self._fields, self._length, self._close, self._dated = _check_headers(headers)
        self.status = status
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write`` callable that ``start_response`` returns."""
        if self.status is None:
            raise RuntimeError("write() called before start_response()")
        data = _as_bytes(data)
        if self.started:
            self._body(data)
        elif data:
            self._start(data, None)

    def send(self, result: Iterable[bytes]) -> None:
        """Send what the app returned; the caller closes it."""
        if isinstance(result, FileWrapper) and self._sendfile(result):
            return
        total = None
        if self._length is None and type(result) in (list, tuple):
            # The whole body is at hand: send its length, not chunks.
            total = sum(map(len, result))
        for item in result:
            data = _as_bytes(item)
            if not data:
                continue
            if self.started:
                self._body(data)
            else:
                self._start(data, total)
            if self._bodyless:
                break
        if not self.started:
            self._start(b"", total or 0)
        self._finish()

    def send_continue(self) -> None:
        """Answer ``Expect: 100-continue``, once the app reads the body."""
        if not self.started:
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def send_error(self, status: int) -> None:
        self.started = True
        self.keep_alive = False
        self._send(error_response(status))

    def _start(self, data: bytes, total: int | None) -> None:
        if self.status is None:
            raise RuntimeError("the app returned without calling start_response()")
        request = self._request
        self._bodyless = request.method == "HEAD" or self.status[:3] in ("204", "304")
        fields = ["HTTP/1.1 ", self.status, "\r\n", self._fields]
        length = self._length
        if length is None and not self._bodyless:
            if total is not None:
                length = total
                fields.append(f"Content-Length: {total}\r\n")
            elif request.version == "HTTP/1.1":
                self._chunked = True
                fields.append("Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the body ends where the connection does
        self._left = None if self._bodyless else length
        self.keep_alive = (
            self.keep_alive
            and not self._close
            and not self._handler.closing
            and self.body.can_drain(DRAIN_LIMIT)
        )
        if not self._dated:
            fields.append(date_field())
        if not self.keep_alive:
            fields.append("Connection: close\r\n")
        elif request.version == "HTTP/1.0":
            fields.append("Connection: keep-alive\r\n")
        fields.append("\r\n")
        head = "".join(fields).encode("latin-1")
        self.started = True
        self._body(data, head)

    def _body(self, data: bytes, head: bytes = b"") -> None:
        if self._bodyless:
            data = b""
        elif self._left is not None:
            if len(data) > self._left:
                self._overflow()
                data = data[: self._left]
            self._left -= len(data)
        elif self._chunked and data:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if head and len(data) < SMALL_WRITE:
            self._send(head + data)
            return
        if head:
            self._send(head)
        if data:
            self._send(data)

    def _overflow(self) -> None:
        if not self._close:  # after the head, _close means "already warned"
            log.warning(
                "app sent more than its Content-Length=%s; response cut and "
                "connection closed pid=%d",
                self._length,
                os.getpid(),
            )
        self._close = True
        self.keep_alive = False

    def _finish(self) -> None:
        if self._chunked:
            self._send(b"0\r\n\r\n")
        elif self._left:
            log.warning(
                "app sent %d bytes fewer than its Content-Length=%s; connection "
                "closed pid=%d",
                self._left,
                self._length,
                os.getpid(),
            )
            self.keep_alive = False

    def _sendfile(self, wrapper: FileWrapper) -> bool:
        # sendfile() needs a length to send and a real file behind it.
        if self._length is None or self.started:
            return False
        try:
            offset = wrapper.filelike.tell()
            wrapper.filelike.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        self._start(b"", None)
        if self._left:
            try:
                sent = self._sock.sendfile(wrapper.filelike, offset, self._left)
            except OSError as exc:
                raise ClientDisconnected(f"sending a file: {exc}") from exc
            self._left -= sent
        self._finish()
        return True

    def _send(self, data: bytes) -> None:
        try:
            if len(data) <= SMALL_WRITE:
                self._sock.sendall(data)
                return
            # sendall()'s timeout bounds the whole call; a big body to a slow
            # reader needs a bound on each send that makes no progress.
            view = memoryview(data)
            while view:
                view = view[self._sock.send(view) :]
        except OSError as exc:
            raise ClientDisconnected(f"sending the response: {exc}") from exc


def _check_headers(
    headers: list[tuple[str, str]],
) -> tuple[str, int | None, bool, bool]:
    """Validate the app's headers: (header lines, Content-Length, close, Date)."""
    lines = []
    length = None
    close = dated = False
    for name, value in headers:
        if type(name) is not str or not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid response header name {name!r}")
        if type(value) is not str or _BAD_VALUE.search(value):
            raise ValueError(f"invalid value for response header {name}: {value!r}")
        lower = name.lower()
        if lower in _SPECIAL:
            if lower == "connection":
                close = close or "close" in value.lower()
                continue  # the server writes its own
            if lower in _HOP_BY_HOP:
                raise ValueError(f"{name} is a hop-by-hop header, the server's to set")
            if lower == "date":
                dated = True
            elif length is not None or not (value.isascii() and value.isdigit()):
                raise ValueError(f"invalid or repeated Content-Length {value!r}")
            else:
                length = int(value)
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines), length, close, dated


def _as_bytes(data: object) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"the app gave {type(data).__name__}, not bytes")


class FileWrapper:
    """``wsgi.file_wrapper``: a file sent with sendfile() when it can be."""

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        while data := self.filelike.read(self.blksize):
            yield data

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()
