"""The wsgiref backend: HTTP/1.1 over real sockets, and its parser as units.

The protocol tests share one runner per socket family (TCP and UNIX) that
serves ``wsgiref_apps:router``; tests that signal the runner start their own.
Clients are raw sockets, so that malformed and pipelined requests go out
byte for byte as written here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import harness
import pytest

from juggler.backends.base import HeadLimits
from juggler.backends.http11 import (
    ClientDisconnected,
    HttpError,
    Reader,
    parse_head,
)
from juggler.backends.http11_body import ChunkedBody, LengthBody

APP = "wsgiref_apps:router"
LIMITS = HeadLimits()


# -- a raw HTTP/1.1 client ----------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One connection: send raw bytes, read responses one at a time."""

    def __init__(self, runner: harness.RunnerProcess) -> None:
        self.sock = runner.connect()
        self.file: BinaryIO = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, head_only: bool = False) -> Reply:
        return read_reply(self.file, head_only)

    def request(self, data: bytes, head_only: bool = False) -> Reply:
        self.send(data)
        return self.reply(head_only)

    def closed(self) -> bool:
        """Whether the server closed the connection (waits for it)."""
        try:
            return self.file.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_reply(f: BinaryIO, head_only: bool = False) -> Reply:
    line = f.readline()
    if not line:
        raise EOFError("the server closed the connection")
    _, code, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(code)
    if head_only or status in (100, 204, 304):
        body = b""
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = read_chunked(f)
    else:
        body = f.read()
    return Reply(status, headers, body)


def read_chunked(f: BinaryIO) -> bytes:
    parts = []
    while size := int(f.readline().split(b";")[0], 16):
        parts.append(f.read(size))
        assert f.read(2) == b"\r\n"
    while f.readline() not in (b"\r\n", b""):
        pass
    return b"".join(parts)


def get(path: str, extra: str = "", version: str = "HTTP/1.1") -> bytes:
    return f"GET {path} {version}\r\nHost: test\r\n{extra}\r\n".encode("latin-1")


def post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


# -- fixtures -----------------------------------------------------------------
@dataclass
class Served:
    runner: harness.RunnerProcess
    directory: Path

    def hits(self) -> list[str]:
        path = self.directory / "hits"
        return path.read_text().splitlines() if path.exists() else []

    def client(self) -> Client:
        return Client(self.runner)


def _env(directory: Path) -> dict[str, str]:
    return {
        "WSGIREF_HITS": str(directory / "hits"),
        "WSGIREF_BARRIER": str(directory),
    }


@pytest.fixture(scope="module", params=["tcp", "unix"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("wsgiref")
    runner = harness.RunnerProcess(
        APP,
        backend="wsgiref",
        family=request.param,
        env=_env(directory),
        # The backend's own environ, without the runner's X-Forwarded-* trust
        # (tests/runner/test_forwarded.py).
        extra_args=("--forwarded-allow-ips", ""),
    )
    try:
        runner.start()
        yield Served(runner, directory)
    finally:
        runner.stop()


@pytest.fixture
def own_dir(tmp_path: Path) -> Path:
    return tmp_path


def unique(prefix: str) -> str:
    return f"/{prefix}/{uuid.uuid4().hex[:8]}"


# -- keep-alive, pipelining, bodies -------------------------------------------
def test_keep_alive_serves_several_requests_on_one_connection(served: Served) -> None:
    with served.client() as client:
        ports = set()
        for i in range(3):
            reply = client.request(get(f"/echo/{i}"))
            assert reply.status == 200
            assert reply.json()["PATH_INFO"] == f"/echo/{i}"
            assert "connection" not in reply.headers
            ports.add(reply.json().get("REMOTE_PORT"))
        assert len(ports) == 1


def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    with served.client() as client:
        client.send(b"".join(get(f"/echo/p{i}") for i in range(5)))
        paths = [client.reply().json()["PATH_INFO"] for _ in range(5)]
        assert paths == [f"/echo/p{i}" for i in range(5)]


def test_chunked_request_body_is_dechunked(served: Served) -> None:
    body = b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    with served.client() as client:
        reply = client.request(head + body)
        assert reply.json()["body"] == "hello world"
        assert "CONTENT_LENGTH" not in reply.json()
        assert client.request(get("/echo/after")).status == 200


@pytest.mark.parametrize("mode", ["lines", "small"])
def test_body_read_by_lines_or_small_reads(served: Served, mode: str) -> None:
    data = b"one\ntwo\nthree"
    with served.client() as client:
        reply = client.request(post(f"/echo?read={mode}", data))
        expected = b"one\n|two\n|three" if mode == "lines" else data
        assert reply.json()["body"] == expected.decode()


@pytest.mark.parametrize("chunked", [False, True])
def test_unread_body_is_drained_before_the_next_request(
    served: Served, chunked: bool
) -> None:
    if chunked:
        first = (
            b"POST /echo?read=none HTTP/1.1\r\nHost: t\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n4\r\nGET \r\n0\r\n\r\n"
        )
    else:
        first = post("/echo?read=none", b"GET /fake HTTP/1.1\r\n\r\n")
    with served.client() as client:
        client.send(first + get("/echo/second"))
        assert client.reply().json()["body"] == ""
        assert client.reply().json()["PATH_INFO"] == "/echo/second"


def test_large_unread_body_closes_the_connection(served: Served) -> None:
    with served.client() as client:
        head = b"POST /echo?read=none HTTP/1.1\r\nHost: t\r\n"
        client.send(head + b"Content-Length: 10000000\r\n\r\n" + b"x" * 100_000)
        reply = client.reply()
        assert reply.status == 200
        assert reply.headers["connection"] == "close"
        assert client.closed()


def test_expect_100_continue_is_answered_when_the_app_reads(served: Served) -> None:
    with served.client() as client:
        head = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
        client.send((head + "Expect: 100-continue\r\n\r\n").encode())
        assert client.reply().status == 100
        client.send(b"data")
        assert client.reply().json()["body"] == "data"


def test_expect_100_continue_without_reading_closes(served: Served) -> None:
    with served.client() as client:
        head = "POST /echo?read=none HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
        reply = client.request((head + "Expect: 100-continue\r\n\r\n").encode())
        assert reply.status == 200
        assert reply.headers["connection"] == "close"


# -- responses ----------------------------------------------------------------
def test_response_without_length_is_chunked_on_http11(served: Served) -> None:
    with served.client() as client:
        reply = client.request(get("/stream"))
        assert reply.headers["transfer-encoding"] == "chunked"
        assert reply.body == b"part0;part1;part2;"
        assert client.request(get("/echo/next")).status == 200


def test_response_without_length_is_close_delimited_on_http10(served: Served) -> None:
    with served.client() as client:
        reply = client.request(get("/stream", version="HTTP/1.0"))
        assert "transfer-encoding" not in reply.headers
        assert reply.headers["connection"] == "close"
        assert reply.body == b"part0;part1;part2;"


def test_http10_keep_alive_only_when_asked(served: Served) -> None:
    with served.client() as client:
        ask = "Connection: keep-alive\r\n"
        reply = client.request(get("/echo/a", ask, version="HTTP/1.0"))
        assert reply.headers["connection"] == "keep-alive"
        reply = client.request(get("/echo/b", version="HTTP/1.0"))
        assert reply.headers["connection"] == "close"
        assert client.closed()


def test_connection_close_from_the_client(served: Served) -> None:
    with served.client() as client:
        reply = client.request(get("/echo", "Connection: close\r\n"))
        assert reply.headers["connection"] == "close"
        assert client.closed()


def test_head_gets_headers_only(served: Served) -> None:
    with served.client() as client:
        reply = client.request(
            b"HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n", head_only=True
        )
        assert reply.status == 200
        assert int(reply.headers["content-length"]) > 0
        # Had a body been sent, it would be read here as the next status line.
        assert client.request(get("/echo/after-head")).status == 200


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_for_204_and_304(served: Served, code: int) -> None:
    with served.client() as client:
        assert client.request(get(f"/status/{code}")).status == code
        assert client.request(get("/echo/after")).status == 200


def test_write_callable_and_returned_body(served: Served) -> None:
    with served.client() as client:
        assert client.request(get("/writer")).body == b"written;returned"


def test_iterable_close_is_called(served: Served) -> None:
    path = unique("closing")
    with served.client() as client:
        assert client.request(get(path)).body == b"closing"
    harness.wait_for(lambda: f"closed {path}" in served.hits())


def test_file_wrapper(served: Served) -> None:
    expected = (harness.APPS_DIR / "wsgiref_apps.py").read_bytes()
    with served.client() as client:
        assert client.request(get("/files")).body == expected
        assert client.request(get("/echo/after")).status == 200


def test_body_longer_than_content_length_is_cut(served: Served) -> None:
    with served.client() as client:
        reply = client.request(get("/too_long"))
        assert reply.body == b"0123"
        assert client.closed()


# -- the environ --------------------------------------------------------------
def test_environ(served: Served) -> None:
    target = "/echo/caf%C3%A9%20x/%2F?q=%20a&b=1"
    extra = (
        "Content-Type: text/plain\r\nX-Multi: one\r\nX-Multi: two\r\n"
        "X-Forwarded-For: 10.0.0.1\r\nX_Forwarded_For: 6.6.6.6\r\n"
    )
    with served.client() as client:
        env = client.request(get(target, extra)).json()
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/echo/caf\xc3\xa9 x//"
    assert env["QUERY_STRING"] == "q=%20a&b=1"
    assert env["RAW_URI"] == target
    assert env["SCRIPT_NAME"] == ""
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_CONTENT_TYPE" not in env
    assert env["HTTP_HOST"] == "test"
    assert env["HTTP_X_MULTI"] == "one, two"
    assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert env["wsgi.multithread"] is True
    assert env["wsgi.version"] == [1, 0]
    if served.runner.family == "unix":
        assert env["REMOTE_ADDR"] == ""
        assert "REMOTE_PORT" not in env
        assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("localhost", "80")
    else:
        host, port = served.runner.address  # type: ignore[misc]
        assert env["REMOTE_ADDR"] == "127.0.0.1"
        assert env["REMOTE_PORT"].isdigit()
        assert (env["SERVER_NAME"], env["SERVER_PORT"]) == (host, str(port))


def test_absolute_form_target(served: Served) -> None:
    with served.client() as client:
        env = client.request(get("http://example.com/echo/abs?x=1")).json()
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/echo/abs", "x=1")


# -- errors from the app ------------------------------------------------------
@pytest.mark.parametrize("path", ["/bad_header", "/bad_status", "/boom"])
def test_app_errors_are_500_and_the_worker_keeps_serving(
    served: Served, path: str
) -> None:
    with served.client() as client:
        reply = client.request(get(path))
        assert reply.status == 500
        assert b"injected" not in reply.body
        assert "set-cookie" not in reply.headers
    with served.client() as client:
        assert client.request(get("/echo/after-error")).status == 200
    log = served.runner.log()
    assert f"app raised ValueError on GET '{path}'" in log or "boom from the app" in log
    assert f"pid={served.runner.proc.pid}" in log  # type: ignore[union-attr]


def test_app_error_after_the_head_closes_the_connection(served: Served) -> None:
    with served.client() as client:
        client.send(get("/boom_late"))
        with pytest.raises(ValueError):  # the chunked body never ends properly
            client.reply()


# -- request-head limits and malformed heads ----------------------------------
REFUSED = [
    pytest.param(get("/" + "a" * 5000), 414, id="long-request-line"),
    pytest.param(
        get("/", "".join(f"X-H{i}: v\r\n" for i in range(101))), 431, id="101-fields"
    ),
    pytest.param(get("/", f"X-Big: {'v' * 9000}\r\n"), 431, id="long-field"),
    pytest.param(b"GET /\r\nHost: t\r\n\r\n", 400, id="no-version"),
    pytest.param(b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400, id="double-space"),
    pytest.param(b"GET / http/1.1\r\nHost: t\r\n\r\n", 400, id="lowercase-version"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505, id="http2"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="no-host"),
    pytest.param(get("/", "Host: other\r\n"), 400, id="two-hosts"),
    pytest.param(get("/", "X-A : b\r\n"), 400, id="space-before-colon"),
    pytest.param(get("/", "X-A: b\r\n folded\r\n"), 400, id="obs-fold"),
    pytest.param(get("/", "X-A: b\x00c\r\n"), 400, id="nul"),
    pytest.param(get("/", "X-A: b\rc\r\n"), 400, id="bare-cr"),
    pytest.param(get("/", "X-A: b\nX-B: c\r\n"), 400, id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\nHost: t\n\n", 400, id="lf-only-head"),
    pytest.param(b"GET nopath HTTP/1.1\r\nHost: t\r\n\r\n", 400, id="bad-target"),
]


@pytest.mark.parametrize(("data", "status"), REFUSED)
def test_malformed_or_oversized_heads_are_refused(
    served: Served, data: bytes, status: int
) -> None:
    smuggled = unique("smuggled")
    with served.client() as client:
        reply = client.request(data + get(smuggled))
        assert reply.status == status
        assert reply.headers["connection"] == "close"
        assert client.closed()
    assert smuggled not in served.hits()


def test_endless_head_is_bounded(served: Served) -> None:
    with served.client() as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        try:
            for _ in range(200):
                client.send(b"X-Filler: " + b"v" * 8000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: what we want
        # The 431 may be lost to a reset while we were still sending.
        with contextlib.suppress(EOFError, ConnectionResetError):
            assert client.reply().status == 431
        assert client.closed()


# -- request smuggling --------------------------------------------------------
def _chunked(body: bytes, te: str = "chunked", extra: str = "") -> bytes:
    head = f"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {te}\r\n{extra}\r\n"
    return head.encode() + body


SMUGGLING = [
    pytest.param(
        _chunked(b"0\r\n\r\n", extra="Content-Length: 5\r\n"), 400, id="cl-and-te"
    ),
    pytest.param(
        post("/echo", b"abcde", "Content-Length: 5\r\n"), 400, id="duplicate-cl"
    ),
    pytest.param(
        post("/echo", b"abcde", "Content-Length: 6\r\n"), 400, id="conflicting-cl"
    ),
    pytest.param(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nabcde",
        400,
        id="cl-list",
    ),
    pytest.param(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nabcde",
        400,
        id="cl-sign",
    ),
    pytest.param(_chunked(b"0\r\n\r\n", te="gzip"), 400, id="te-gzip"),
    pytest.param(_chunked(b"0\r\n\r\n", te="chunked, gzip"), 400, id="te-not-final"),
    pytest.param(_chunked(b"0\r\n\r\n", te="gzip, chunked"), 501, id="te-unsupported"),
    pytest.param(
        _chunked(b"0\r\n\r\n", te="chunked", extra="Transfer-Encoding: chunked\r\n"),
        400,
        id="te-twice",
    ),
    pytest.param(_chunked(b"0\r\n\r\n", te="xchunked"), 400, id="te-lookalike"),
    pytest.param(
        b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        id="te-in-http10",
    ),
    pytest.param(_chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk-0x"),
    pytest.param(_chunked(b"5_0\r\nhello\r\n0\r\n\r\n"), 400, id="chunk-underscore"),
    pytest.param(_chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk-negative"),
    pytest.param(_chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400, id="chunk-space"),
    pytest.param(_chunked(b"\r\nhello\r\n0\r\n\r\n"), 400, id="chunk-empty"),
    pytest.param(_chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400, id="chunk-too-long"),
    pytest.param(_chunked(b"5\nhello\r\n0\r\n\r\n"), 400, id="chunk-bare-lf"),
    pytest.param(_chunked(b"f" * 17 + b"\r\nhello\r\n0\r\n\r\n"), 400, id="chunk-huge"),
]


@pytest.mark.parametrize(("data", "status"), SMUGGLING)
def test_smuggling_attempts_are_refused(
    served: Served, data: bytes, status: int
) -> None:
    smuggled = unique("smuggled")
    with served.client() as client:
        reply = client.request(data + get(smuggled))
        assert reply.status == status
        assert reply.headers["connection"] == "close"
        assert client.closed()
    # The app counts what reaches it; a request that does appears in hits.
    marker = unique("marker")
    with served.client() as client:
        assert client.request(get(marker)).status == 200
    assert marker in served.hits()
    assert smuggled not in served.hits()


# -- processes: idle timeout, graceful stop, signals --------------------------
def test_idle_keep_alive_connection_is_closed_after_the_timeout(own_dir: Path) -> None:
    extra = ["--keepalive-timeout", "0.2"]
    with (
        harness.running(
            APP, backend="wsgiref", extra_args=extra, env=_env(own_dir)
        ) as runner,
        Client(runner) as client,
    ):
        assert client.request(get("/echo")).status == 200
        assert client.closed()


def test_keep_alive_off_with_a_zero_timeout(own_dir: Path) -> None:
    extra = ["--keepalive-timeout", "0"]
    with (
        harness.running(
            APP, backend="wsgiref", extra_args=extra, env=_env(own_dir)
        ) as runner,
        Client(runner) as client,
    ):
        assert client.request(get("/echo")).headers["connection"] == "close"
        assert client.closed()


def _start_barrier(runner: harness.RunnerProcess, directory: Path) -> Client:
    client = Client(runner)
    client.send(get("/barrier"))
    harness.wait_for((directory / "started").exists, message="barrier started")
    return client


def test_graceful_stop_finishes_the_request_in_flight(own_dir: Path) -> None:
    with (
        harness.running(APP, backend="wsgiref", env=_env(own_dir)) as runner,
        Client(runner) as idle,
        _start_barrier(runner, own_dir) as busy,
    ):
        assert idle.request(get("/echo")).status == 200
        runner.signal(signal.SIGTERM)
        runner.notify.wait_for("STOPPING=1")
        assert idle.closed()  # idle keep-alive connections close at once
        assert runner.poll() is None  # the request in flight holds it

        (own_dir / "release").touch()
        reply = busy.reply()
        assert reply.json() == {"released": True}
        assert reply.headers["connection"] == "close"
        assert runner.wait() == 0


def test_graceful_timeout_bounds_the_stop(own_dir: Path) -> None:
    extra = ["--graceful-timeout", "0.5"]
    with harness.running(
        APP, backend="wsgiref", extra_args=extra, env=_env(own_dir)
    ) as runner:
        with _start_barrier(runner, own_dir):
            runner.signal(signal.SIGTERM)
            # The barrier holds for 60 s; only the graceful timeout ends it.
            assert runner.wait(timeout=15) == 0
        assert "graceful_timeout=0.5s reached with 1 connection(s)" in runner.log()


def test_second_sigint_exits_at_once(own_dir: Path) -> None:
    extra = ["--graceful-timeout", "60"]
    with (
        harness.running(
            APP, backend="wsgiref", extra_args=extra, env=_env(own_dir)
        ) as runner,
        _start_barrier(runner, own_dir),
    ):
        runner.signal(signal.SIGINT)
        runner.notify.wait_for("STOPPING=1")
        runner.signal(signal.SIGINT)
        assert runner.wait(timeout=15) == 128 + signal.SIGINT


def test_sigterm_when_idle_exits_zero(own_dir: Path) -> None:
    with harness.running(APP, backend="wsgiref", env=_env(own_dir)) as runner:
        runner.signal(signal.SIGTERM)
        assert runner.wait() == 0
        assert "stopped: pid=" in runner.log()


def test_busy_worker_leaves_connections_to_its_sibling(own_dir: Path) -> None:
    """With every thread busy, a worker stops accepting; a sibling serves."""
    first = harness.RunnerProcess(
        APP, backend="wsgiref", extra_args=["--threads", "1"], env=_env(own_dir)
    )
    first.start()
    second = SiblingRunner(first, env=_env(own_dir))
    try:
        second.start()
        with _start_barrier(first, own_dir) as busy:
            # Whichever worker took the barrier has no free thread: this
            # request must be served by the other one, while the barrier holds.
            with Client(first) as client:
                env = client.request(get("/echo/sibling")).json()
            assert env["PATH_INFO"] == "/echo/sibling"
            (own_dir / "release").touch()
            assert busy.reply().json() == {"released": True}
    finally:
        second.stop()
        first.stop()


def test_silent_connections_hold_no_thread(own_dir: Path) -> None:
    extra = ["--threads", "1"]
    with harness.running(
        APP, backend="wsgiref", extra_args=extra, env=_env(own_dir)
    ) as runner:
        silent = [runner.connect() for _ in range(5)]
        try:
            with Client(runner) as client:
                assert client.request(get("/echo/talker")).status == 200
        finally:
            for sock in silent:
                sock.close()


class SiblingRunner(harness.RunnerProcess):
    """A second runner serving the socket another RunnerProcess bound."""

    def __init__(self, sibling: harness.RunnerProcess, env: dict[str, str]) -> None:
        super().__init__(APP, backend="wsgiref", extra_args=["--threads", "1"], env=env)
        self.sibling = sibling

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> None:
        assert self.sibling.sock is not None
        fd = self.sibling.sock.fileno()
        notify_env = {"NOTIFY_SOCKET": self.notify.path}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(fd),
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **notify_env, **self.env},
                start_new_session=True,
            )
        if wait_ready:
            self.wait_ready(timeout)


# -- the parser, as units (no processes) --------------------------------------
def head(data: bytes) -> Any:
    return parse_head(data, LIMITS)


def test_parse_head_fields_and_framing() -> None:
    request = head(
        b"POST /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n"
        b"X-Spaces:  padded value \t\r\nConnection: keep-alive, Upgrade"
    )
    assert (request.method, request.path, request.query) == ("POST", "/a%20b", "x=1")
    assert request.content_length == 12
    assert not request.chunked
    assert request.keep_alive
    assert (b"x-spaces", b"padded value") in request.headers


@pytest.mark.parametrize(
    ("data", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: h", True),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Close", False),
        (b"GET / HTTP/1.0", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive", True),
    ],
)
def test_parse_head_keep_alive(data: bytes, keep_alive: bool) -> None:
    assert head(data).keep_alive is keep_alive


def test_parse_head_chunked_and_expect() -> None:
    request = head(
        b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n"
        b"Expect: 100-continue"
    )
    assert request.chunked
    assert request.content_length is None
    assert request.expect_continue


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * 4094 + b" HTTP/1.1\r\nHost: h", 414),
        (b"GET / HTTP/1.1\r\nHost: h" + b"\r\nX: y" * 100, 431),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"y" * 8188, 431),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\n: empty-name", 400),
        (b"G(T / HTTP/1.1\r\nHost: h", 400),
        (b"GET / HTTP/3.0\r\nHost: h", 505),
    ],
)
def test_parse_head_refusals(data: bytes, status: int) -> None:
    with pytest.raises(HttpError) as caught:
        head(data)
    assert caught.value.status == status


def test_parse_head_limits_are_inclusive() -> None:
    line = b"GET /" + b"a" * (4094 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == 4094
    fields = b"".join(b"\r\nX-%d: y" % i for i in range(99))
    assert head(line + b"\r\nHost: h" + fields).path.startswith("/a")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    left.settimeout(10)
    right.settimeout(10)
    try:
        yield left, right
    finally:
        left.close()
        right.close()


def test_reader_keeps_pipelined_bytes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    reader = Reader(server, 10.0)
    client.sendall(b"\r\nGET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGE")
    assert reader.read_head(LIMITS, deadline()) == b"GET /1 HTTP/1.1"
    assert reader.read_head(LIMITS, deadline()) == b"GET /2 HTTP/1.1"
    assert bytes(reader.buf) == b"GE"
    client.close()
    with pytest.raises(ClientDisconnected):
        reader.read_head(LIMITS, deadline())


def test_reader_returns_none_on_a_clean_close(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    client.close()
    assert Reader(server, 10.0).read_head(LIMITS, deadline()) is None


def test_reader_refuses_a_trickled_head_at_the_deadline(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    client.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n")
    with pytest.raises(HttpError) as caught:
        Reader(server, 10.0).read_head(LIMITS, deadline(0.05))
    assert caught.value.status == 408
    assert server.gettimeout() == 10.0  # restored for the body and the response


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * 5000, 414),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101, 431),
        (b"GET / HTTP/1.1\r\nX: " + b"y" * 9000, 431),
        (b"GET / HTTP/1.1\nHost: h\n", 400),
    ],
)
def test_reader_bounds_an_incomplete_head(
    pair: tuple[socket.socket, socket.socket], data: bytes, status: int
) -> None:
    server, client = pair
    threading.Thread(target=client.sendall, args=(data,), daemon=True).start()
    with pytest.raises(HttpError) as caught:
        Reader(server, 10.0).read_head(LIMITS, deadline())
    assert caught.value.status == status


def test_length_body(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    reader = Reader(server, 10.0)
    client.sendall(b"line one\nline two\nrestNEXT")
    body = LengthBody(reader, 22)
    assert body.readline() == b"line one\n"
    assert body.readline(4) == b"line"
    assert body.read(6) == b" two\nr"
    assert body.read() == b"est"
    assert body.finished
    assert body.read() == b""
    # Not one byte past the body was taken off the connection.
    assert bytes(reader.buf) + server.recv(10) == b"NEXT"


def test_chunked_body(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    reader = Reader(server, 10.0)
    client.sendall(b"3\r\nabc\r\nA ; ext=1\r\n0123456789\r\n0\r\nT: v\r\n\r\nNEXT")
    body = ChunkedBody(reader, LIMITS)
    assert list(body) == [b"abc0123456789"]
    assert body.finished
    assert bytes(reader.buf) == b"NEXT"


def test_chunked_body_drain(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    reader = Reader(server, 10.0)
    client.sendall(b"4\r\nabcd\r\n0\r\n\r\nNEXT")
    assert ChunkedBody(reader, LIMITS).drain(1000)
    assert bytes(reader.buf) == b"NEXT"


def test_chunked_body_drain_stops_at_its_limit(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    client.sendall(b"10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n")
    assert not ChunkedBody(Reader(server, 10.0), LIMITS).drain(8)


def test_body_failure_is_recorded(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(b"zz\r\n")
    body = ChunkedBody(Reader(server, 10.0), LIMITS)
    with pytest.raises(HttpError):
        body.read()
    assert body.failed
    assert not body.drain(1000)


def deadline(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds
