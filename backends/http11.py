"""HTTP/1.1 request heads for threaded servers on blocking sockets.

The parser is strict where leniency lets a proxy and this server disagree on
where a request ends (request smuggling): a bare CR or LF, a space before a
colon, a folded line, two Content-Lengths, a Content-Length next to a
Transfer-Encoding, or a transfer coding other than a final ``chunked`` are
refused with 400 and the connection is closed, so nothing behind such a
request is ever read as a request of its own.

``Reader`` owns a connection's receive buffer. ``Reader.read_head`` returns
one request head, bounded by ``HeadLimits`` while it is still incomplete, and
``parse_head`` turns it into a ``Request``. The body readers of
``http11_body`` then take that request's body from the same buffer. The
module ends with the two response pieces every server here writes: the
Date field and the short error response.
"""

from __future__ import annotations

import http
import re
import socket
import time
from dataclasses import dataclass

from juggler.backends.base import HeadLimits

RECV_SIZE = 65536

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(rb"(%s+) ([^\x00-\x20\x7f]+) HTTP/(\d)\.(\d)" % _TCHAR)
# A field: token, colon, optional whitespace, then visible words separated by
# spaces or tabs. Control characters (NUL, bare CR) cannot match.
_VCHARS = rb"[\x21-\x7e\x80-\xff]+"
FIELD_LINE = re.compile(
    rb"(%s+):[ \t]*((?:%s(?:[ \t]+%s)*)?)[ \t]*" % (_TCHAR, _VCHARS, _VCHARS)
)
_ABSOLUTE_FORM = re.compile(r"https?://[^/?#]*", re.IGNORECASE)
_FRAMING_FIELDS = frozenset(
    (b"content-length", b"transfer-encoding", b"connection", b"expect", b"host")
)


class HttpError(Exception):
    """A request this server refuses: answer ``status`` and close."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class ClientDisconnected(ConnectionError):
    """The client went away, or stalled, in the middle of a message."""


@dataclass(slots=True)
class Request:
    """A parsed request head and how its body is framed."""

    method: str
    target: str  # as received (latin-1), for RAW_URI
    path: str  # still percent-encoded
    query: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: list[tuple[bytes, bytes]]  # (lower-cased name, value)
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool


def parse_head(head: bytes, limits: HeadLimits) -> Request:
    """Parse a complete head (without its final empty line)."""
    newlines = head.count(b"\n")
    if newlines != head.count(b"\r\n") or head.count(b"\r") != newlines:
        raise HttpError(400, "bare CR or LF in the request head")
    lines = head.split(b"\r\n")
    method, target, version = parse_request_line(lines[0], limits)
    if len(lines) - 1 > limits.max_header_count:
        raise HttpError(431, f"more than {limits.max_header_count} header fields")
    headers = []
    for line in lines[1:]:
        if len(line) > limits.max_header_size:
            raise HttpError(431, f"a header field over {limits.max_header_size} bytes")
        match = FIELD_LINE.fullmatch(line)
        if match is None:
            raise HttpError(400, "malformed header field")
        headers.append((match[1].lower(), match[2]))
    return _frame(method, target, version, headers)


def parse_request_line(line: bytes, limits: HeadLimits) -> tuple[str, str, str]:
    """Method, target and version of a request line (without its CRLF)."""
    if len(line) > limits.max_request_line:
        raise HttpError(414, f"request line over {limits.max_request_line} bytes")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise HttpError(400, "malformed request line")
    if match[3] != b"1":
        raise HttpError(505, "only HTTP/1.x is served")
    version = "HTTP/1.1" if match[4] != b"0" else "HTTP/1.0"
    return match[1].decode("ascii"), match[2].decode("latin-1"), version


def _frame(
    method: str, target: str, version: str, headers: list[tuple[bytes, bytes]]
) -> Request:
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    hosts = 0
    expect = False
    for name, value in headers:
        if name not in _FRAMING_FIELDS:
            continue
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings += _tokens(value)
        elif name == b"connection":
            connection += _tokens(value)
        elif name == b"host":
            hosts += 1
        else:
            expect = value.lower() == b"100-continue"

    http11 = version == "HTTP/1.1"
    if hosts > 1 or (http11 and hosts == 0):
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host field")
    path, query = _split_target(target)
    length, chunked = _body_framing(lengths, codings, http11)
    # HTTP/1.1 keeps a connection open unless told; HTTP/1.0 only if asked.
    wanted = b"close" not in connection
    keep_alive = wanted if http11 else b"keep-alive" in connection
    return Request(
        method=method,
        target=target,
        path=path,
        query=query,
        version=version,
        headers=headers,
        content_length=length,
        chunked=chunked,
        keep_alive=keep_alive,
        expect_continue=expect and http11,
    )


def _tokens(value: bytes) -> list[bytes]:
    # Empty list elements ("a, , b") are allowed and ignored (RFC 9110, 5.6.1).
    items = (item.strip(b" \t") for item in value.lower().split(b","))
    return [item for item in items if item]


def _body_framing(
    lengths: list[bytes], codings: list[bytes], http11: bool
) -> tuple[int | None, bool]:
    if codings:
        if not http11:
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if lengths:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if codings[-1] != b"chunked" or b"chunked" in codings[:-1]:
            raise HttpError(400, "chunked must be the final transfer coding, once")
        if len(codings) > 1:
            raise HttpError(501, "transfer codings other than chunked")
        return None, True
    if not lengths:
        return None, False
    if len(lengths) > 1:
        raise HttpError(400, "more than one Content-Length")
    value = lengths[0]
    if not value.isdigit() or len(value) > 18:
        raise HttpError(400, "Content-Length is not a decimal number")
    return int(value), False


def _split_target(target: str) -> tuple[str, str]:
    if not target.startswith("/"):
        if target == "*":
            return "*", ""
        match = _ABSOLUTE_FORM.match(target)
        if match is None:
            raise HttpError(400, "request target is not a path or an absolute URI")
        target = target[match.end() :]
        if not target.startswith("/"):
            target = "/" + target
    path, _, query = target.partition("?")
    return path, query


class Reader:
    """A connection's receive buffer, shared by its heads and bodies."""

    __slots__ = ("buf", "sock", "timeout")

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout  # the socket's usual per-recv timeout
        self.buf = bytearray()

    def read_head(self, limits: HeadLimits, deadline: float) -> bytes | None:
        """The next request head, or None if the client closed first.

        The whole head must arrive by ``deadline``: a client trickling one
        (slowloris) is answered 408, whatever the per-recv timeout is.
        """
        buf = self.buf
        start = 0  # where the search for the empty line resumes
        scan = PartialHead(limits)
        recvs = 0
        try:
            while True:
                # Empty lines before a request line are allowed (RFC 9112, 2.2).
                while buf.startswith(b"\r\n"):
                    del buf[:2]
                    start = scan.counted = scan.lines = 0
                end = buf.find(b"\r\n\r\n", start)
                if end >= 0:
                    head = bytes(buf[:end])
                    del buf[: end + 4]
                    return head
                scan.check(buf)
                start = max(0, len(buf) - 3)
                recvs += 1
                if not self._recv_head(deadline, recvs):
                    if buf:
                        raise ClientDisconnected("closed in the middle of a head")
                    return None
        finally:
            if recvs > 1:
                self.sock.settimeout(self.timeout)

    def _recv_head(self, deadline: float, recvs: int) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HttpError(408, "request head not complete by its deadline")
        # The first recv keeps the usual timeout (it usually finds the data
        # waiting); later ones are cut short at the head's deadline. Setting
        # a timeout costs a system call, hence not on every request.
        if recvs > 1:
            self.sock.settimeout(min(remaining, self.timeout))
        try:
            data = self.sock.recv(RECV_SIZE)
        except TimeoutError:
            if self.buf:
                raise HttpError(408, "request head not complete in time") from None
            raise
        self.buf += data
        return bool(data)

    def take(self, most: int) -> bytes:
        """Between 1 and ``most`` bytes; the client must not close first."""
        buf = self.buf
        if buf:
            data = bytes(buf[:most])
            del buf[:most]
            return data
        return self._recv(min(most, RECV_SIZE))

    def _recv(self, most: int) -> bytes:
        try:
            data = self.sock.recv(most)
        except OSError as exc:
            raise ClientDisconnected(f"reading the body: {exc}") from exc
        if not data:
            raise ClientDisconnected("closed in the middle of a body")
        return data

    def readline(self, limit: int) -> bytes:
        """One CRLF-terminated line of a body, without its CRLF."""
        buf = self.buf
        start = 0
        while (end := buf.find(b"\n", start)) < 0:
            if len(buf) > limit:
                raise HttpError(400, "line too long in a chunked body")
            start = len(buf)
            buf += self._recv(RECV_SIZE)
        line = bytes(buf[: end + 1])
        del buf[: end + 1]
        if not line.endswith(b"\r\n") or b"\r" in line[:-2] or len(line) > limit:
            raise HttpError(400, "malformed line in a chunked body")
        return line[:-2]


def head_ready(buf: bytes | bytearray, limits: HeadLimits) -> bool:
    """Whether ``buf`` can be read without waiting for more: it holds a
    complete head, or one already past the limits (to be refused)."""
    start = 0
    while buf.startswith(b"\r\n", start):
        start += 2
    if buf.find(b"\r\n\r\n", start) >= 0:
        return True
    if start == len(buf):
        return False
    try:
        PartialHead(limits, start).check(buf)
    except HttpError:
        return True
    return False


class PartialHead:
    """Bounds an incomplete head, so that one that never ends stays small.

    Each call looks only at the bytes that arrived since the last one, so a
    head trickled a byte at a time costs linear time, not quadratic. The
    head begins at ``start`` in the buffer (after empty lines a client may
    send between requests).
    """

    __slots__ = ("counted", "limits", "lines", "start")

    def __init__(self, limits: HeadLimits, start: int = 0) -> None:
        self.limits = limits
        self.start = start
        self.counted = start  # bytes of the buffer already looked at
        self.lines = 0  # complete lines seen

    def check(self, buf: bytes | bytearray) -> None:
        limits = self.limits
        start = self.start
        newlines = buf.count(b"\n", self.counted)
        if newlines != buf.count(b"\r\n", max(self.counted - 1, start)):
            raise HttpError(400, "bare LF in the request head")
        self.lines += newlines
        self.counted = len(buf)
        first_line = buf.find(b"\r\n", start) if self.lines else len(buf)
        if first_line - start > limits.max_request_line + 1:
            raise HttpError(414, f"request line over {limits.max_request_line} bytes")
        if self.lines:
            if self.lines - 1 > limits.max_header_count:
                raise HttpError(431, "too many header fields")
            if len(buf) - buf.rfind(b"\n") - 1 > limits.max_header_size + 1:
                raise HttpError(431, "a header field is too long")


_date_cache: tuple[int, str] = (0, "")


def date_field() -> str:
    """The Date header line, formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, f"Date: {http_date(now)}\r\n")
    return _date_cache[1]


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip


def http_date(seconds: float) -> str:
    """RFC 9110's date format, without importing email (10 ms at boot)."""
    t = time.gmtime(seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} "
        f"{t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def error_response(status: int) -> bytes:
    """A complete short response that closes the connection."""
    reason = http.HTTPStatus(status).phrase
    body = f"{status} {reason}\n"
    return (
        f"HTTP/1.1 {status} {reason}\r\n{date_field()}"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode("latin-1")
