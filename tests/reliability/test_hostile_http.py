"""Hostile HTTP against every backend, through a real runner.

One runner per backend (and hypercorn once more for WSGI) serves
``hostile_http``, the conformance app with a record of every request that
reaches it. Over loopback TCP, the scenarios show that:

- every backend applies one request-head policy, Gunicorn's limits: a
  request line over 4094 bytes gets 414, more than 100 fields or one over
  8190 bytes get 431, and a head that never ends is cut off with the
  worker's memory unmoved (the conformance corpus proves the answers
  exchange by exchange; here they are counted across backends);
- the framings a proxy and a server may read differently (two
  Content-Lengths, one beside a Transfer-Encoding, a coding other than a
  final ``chunked``, malformed chunk sizes, bare CR or LF) are answered
  4xx and the connection closed, and a request sent behind them never
  reaches the app;
- a response field with CR, LF or NUL from the app becomes a 500 and is
  never sent; a field named with ``_`` never takes the place of its ``-``
  twin; control characters in a logged path are escaped; X-Forwarded-*
  is believed from 127.0.0.1 (``--forwarded-allow-ips``' default) only;
- a head trickled a byte at a time is closed at ``--header-timeout`` from
  its first byte, a body that stops and a client that reads nothing at
  ``--io-timeout`` (with both cut to 2 s), and 200 such connections to a
  worker leave the p99 of other clients' requests under 500 ms;
- behind a real nginx that keeps upstream connections alive, the worker's
  idle timeout outlasts nginx's (scaled to 2 s and 1 s) and requests paced
  around both never get a 502; a shorter one makes the runner warn.

What a server package does that no adapter can change is listed in
``SERVER_LIMITS`` (and in tests/conformance/limits.py for the head limits)
with the reason, like a strict xfail: a figure holds when the failures
measured are exactly those, and fails the day one of them goes away.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import select
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import harness
import psutil
import pytest
from conformance import wire
from conformance.conftest import TARGETS, Target
from conformance.limits import KNOWN_LIMITS
from proxy import Nginx

from juggler.backends.base import HeadLimits

T = TypeVar("T")

LIMITS = HeadLimits()
BACKENDS = [target for target in TARGETS if target.family == "tcp"]
ANSWER_TIMEOUT = 3.0
ENDLESS = 4 * 1024 * 1024
# A worker that kept an endless head would grow by about what it was sent.
ENDLESS_RSS_BOUND_KIB = 2048

_MEINHELD_LAX = (
    "meinheld's C parser takes {what}; the environ cannot show it afterwards "
    "(backends/meinheld.py, known shortcomings)"
)
# (backend, exchange) -> why the server package fails it, as measured.
SERVER_LIMITS: dict[tuple[str, str], str] = {
    ("meinheld", "bare-lf-line-ends"): _MEINHELD_LAX.format(what="bare LF line ends"),
    ("meinheld", "bare-lf-in-head"): _MEINHELD_LAX.format(what="a bare LF in a head"),
    ("meinheld", "chunk-size-junk"): _MEINHELD_LAX.format(what="'5 x' as size 5"),
    ("meinheld", "underscore-twin"): (
        "meinheld joins X_Forwarded_For and X-Forwarded-For into one environ "
        "key, HTTP_X_FORWARDED_FOR = 'good, evil' (its C environ builder)"
    ),
}


# -- the runners ----------------------------------------------------------------


@dataclass
class Backend:
    """One runner serving hostile_http, and the record of what its app saw."""

    target: Target
    runner: harness.RunnerProcess
    record: Path

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def address(self) -> tuple[str, int]:
        address = self.runner.address
        assert isinstance(address, tuple)
        return address

    @property
    def pid(self) -> int:
        assert self.runner.proc is not None
        return self.runner.proc.pid

    def connect(self, source: str | None = None) -> wire.Connection:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(ANSWER_TIMEOUT)
            if source is not None:
                sock.bind((source, 0))
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        return wire.Connection(sock)

    def seen(self) -> list[str]:
        """The requests that reached the app, one ``METHOD target`` each."""
        return self.record.read_text().splitlines()


def start_backends(directory: str, extra_args: tuple[str, ...] = ()) -> list[Backend]:
    """A runner per backend, started side by side; stopped again on failure."""
    backends = []
    for target in BACKENDS:
        record = Path(directory, f"{target.name}.record")
        record.touch()
        runner = harness.RunnerProcess(
            f"hostile_http:{target.interface}",
            backend=target.backend,
            extra_args=(*target.args, "--graceful-timeout", "1", *extra_args),
            env={"HOSTILE_RECORD": str(record)},
        )
        backends.append(Backend(target, runner, record))
    try:
        for backend in backends:
            backend.runner.start(wait_ready=False)
        for backend in backends:
            backend.runner.wait_ready()
    except BaseException:
        stop_backends(backends)
        raise
    return backends


def stop_backends(backends: list[Backend]) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(backends) or 1) as pool:
        list(pool.map(lambda backend: backend.runner.stop(), backends))


@pytest.fixture(scope="module")
def backends() -> Iterator[list[Backend]]:
    with tempfile.TemporaryDirectory(prefix="juggler-hostile-") as directory:
        started = start_backends(directory, ("--access-log",))
        try:
            yield started
        finally:
            stop_backends(started)


@pytest.fixture
def fleet(backends: list[Backend]) -> Iterator[list[Backend]]:
    """The module's runners; every one must outlive every scenario."""
    yield backends
    dead = {b.name: b.runner.poll() for b in backends if b.runner.poll() is not None}
    assert not dead, f"runners died: {dead}"


def on_each(backends: list[Backend], exchange: Callable[[Backend], T]) -> dict[str, T]:
    """``exchange`` run against every backend at once; results by name."""
    with concurrent.futures.ThreadPoolExecutor(len(backends)) as pool:
        results = pool.map(exchange, backends)
        pairs = zip(backends, results, strict=True)
        return {backend.name: result for backend, result in pairs}


def verdict(
    failures: dict[str, str], documented: set[str], total: int
) -> tuple[str, bool, bool]:
    """The figure for a criterion measured on ``total`` backends or exchanges.

    It holds when exactly the documented server limits fail (shown as
    "known"): one fixed shows here too, and its entry must go.
    """
    passed = total - len(failures)
    shown = "; ".join(
        f"{name}: {what}{' (known server limit)' if name in documented else ''}"
        for name, what in sorted(failures.items())
    )
    measured = f"{passed}/{total}" + (f" ({shown})" if shown else "")
    extra = sorted(set(failures) - documented)
    fixed = sorted(documented - set(failures))
    if extra:
        measured += f"; NOT a known server limit: {', '.join(extra)}"
    if fixed:
        measured += f"; now passing, drop from the limits: {', '.join(fixed)}"
    # Met only where nothing failed; a documented failure is a shortfall.
    return measured, not extra and not fixed, bool(failures)


# -- exchanges ---------------------------------------------------------------------


def answer(conn: wire.Connection) -> int | str:
    """The status of the next response, or how the connection ended."""
    try:
        return conn.read_response().status
    except wire.ConnectionClosed:
        return "closed"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except TimeoutError:
        return "no answer"
    except OSError:  # the reader timed out before: it is unusable
        return "no answer"
    except ValueError as exc:
        return f"garbled ({exc})"


def closed(conn: wire.Connection) -> bool:
    """Whether the server closes the connection within the answer timeout."""
    try:
        return conn.at_eof()
    except OSError:  # a timeout, now or on an earlier read
        return False


def refused_and_closed(conn: wire.Connection, status: int | None = None) -> str:
    """ "" when the server answered 4xx (or ``status``) and closed, else what."""
    got = answer(conn)
    wanted = got == status if status else isinstance(got, int) and got // 100 == 4
    if not wanted:
        return f"answered {got}" if isinstance(got, int) else str(got)
    if not closed(conn):
        return f"{got}, left open"
    return ""


# -- 1. one request-head policy ----------------------------------------------------


def _long_line() -> bytes:
    return wire.build_request("GET", "/" + "a" * (LIMITS.max_request_line - 13))


def _many_fields() -> bytes:
    fields = [(f"X-Field-{i}", "v") for i in range(LIMITS.max_header_count)]
    return wire.build_request("GET", "/hello", fields)


def _long_field() -> bytes:
    value = "v" * (LIMITS.max_header_size + 1 - len("X-Long: "))
    return wire.build_request("GET", "/hello", [("X-Long", value)])


HEAD_LIMITS = [
    # (criterion, exchange in the conformance corpus, request, status)
    ("request line of 4095 bytes -> 414", "limit_request_line", _long_line, 414),
    ("101 header fields -> 431", "limit_header_count", _many_fields, 431),
    ("a field of 8191 bytes -> 431", "limit_header_size", _long_field, 431),
]


def test_one_request_head_policy_for_every_backend(fleet: list[Backend], figures):
    assert len(_long_line().split(b"\r\n")[0]) == LIMITS.max_request_line + 1
    for criterion, exchange, request, status in HEAD_LIMITS:

        def refuse(backend: Backend, request=request, status=status) -> str:
            with backend.connect() as conn:
                conn.send(request())
                return refused_and_closed(conn, status)

        results = on_each(fleet, refuse)
        failures = {name: str(what) for name, what in results.items() if what}
        documented = {b.name for b in fleet if (b.name, exchange) in KNOWN_LIMITS}
        measured, ok, short = verdict(failures, documented, len(fleet))
        figures.exact(
            f"{criterion}, and closed (backends)", measured, ok, known_shortfall=short
        )


@dataclass
class Endless:
    """What sending a head that never ends did to one worker."""

    sent: int = 0
    ending: str = ""
    rss_growth_kib: int = 0
    seconds: float = 0.0


class PeakRss:
    """The highest RSS of a process, sampled in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def growth_kib(self) -> int:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.start) // 1024


def send_endless(backend: Backend, start: bytes, filler: bytes) -> Endless:
    """Offer ``ENDLESS`` bytes of one head; see how it ends."""
    result = Endless()
    with backend.connect() as warm_up:
        warm_up.request("GET", "/hello")  # the worker's buffers are in use
    with backend.connect() as conn:
        rss = PeakRss(backend.pid)
        began = time.monotonic()
        try:
            conn.send(start)
            while result.sent < ENDLESS:
                conn.send(filler)
                result.sent += len(filler)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except TimeoutError:
            result.ending = "stopped reading, "
        status = answer(conn)
        ended = status in ("closed", "reset") or closed(conn)
        result.ending += f"{status}, {'closed' if ended else 'left open'}"
        result.seconds = time.monotonic() - began
        result.rss_growth_kib = rss.growth_kib()
    return result


ENDLESS_HEADS = {
    "request line": (b"GET /", b"a" * 65536),
    "fields": (b"GET / HTTP/1.1\r\n", b"X-Filler: 1234567\r\n" * 3277),
    "one field": (b"GET / HTTP/1.1\r\nX-Endless: ", b"v" * 65536),
}


def test_a_head_with_no_end_is_bounded_in_memory(fleet: list[Backend], figures):
    growth: dict[str, int] = {}
    not_closed: dict[str, str] = {}
    for shape, (start, filler) in ENDLESS_HEADS.items():
        results = on_each(fleet, lambda b, s=start, f=filler: send_endless(b, s, f))
        for name, result in results.items():
            growth[f"{name}/{shape}"] = result.rss_growth_kib
            if not result.ending.endswith(", closed") or result.ending[0].isalpha():
                not_closed[f"{name}/{shape}"] = result.ending

    worst = max(growth, key=lambda key: growth[key])
    figures.exact(
        "a head with no end bounded in memory: worker RSS growth over a 4 MiB "
        f"endless head (request line, fields, one field; limit "
        f"{ENDLESS_RSS_BOUND_KIB} KiB)",
        f"largest {growth[worst]} KiB ({worst}); median "
        f"{sorted(growth.values())[len(growth) // 2]} KiB",
        growth[worst] < ENDLESS_RSS_BOUND_KIB,
    )
    total = len(growth)
    shown = "; ".join(f"{key}: {what}" for key, what in sorted(not_closed.items()))
    figures.exact(
        "a head with no end: answered or cut, and the connection closed",
        f"{total - len(not_closed)}/{total} exchanges"
        + (f" ({shown})" if shown else ""),
        not not_closed,
    )


# -- 2. smuggling --------------------------------------------------------------------


def _post(fields: str, body: bytes, version: str = "1.1") -> bytes:
    head = f"POST /echo HTTP/{version}\r\nHost: x\r\n{fields}\r\n"
    return head.encode("latin-1") + body


def _chunked(body: bytes) -> bytes:
    return _post("Transfer-Encoding: chunked\r\n", body)


# A request hidden in the body, for a server that frames it differently
# from the request's other reading; every case is followed by a plain one.
HIDDEN = b"GET /smuggled-hidden HTTP/1.1\r\nHost: x\r\n\r\n"
SMUGGLING: dict[str, bytes] = {
    "two-content-lengths": _post(
        "Content-Length: 5\r\nContent-Length: 46\r\n", b"hello" + HIDDEN
    ),
    "duplicated-content-length": _post(
        "Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"
    ),
    "content-length-list": _post("Content-Length: 5, 5\r\n", b"hello"),
    "signed-content-length": _post("Content-Length: +5\r\n", b"hello"),
    "content-length-and-chunked": _post(
        "Content-Length: 46\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + HIDDEN
    ),
    "chunked-and-content-length": _post(
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n" + HIDDEN
    ),
    "coding-not-chunked": _post("Transfer-Encoding: gzip\r\n", b"0\r\n\r\n"),
    "chunked-not-last": _post("Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
    "chunked-twice": _post(
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"0\r\n\r\n",
    ),
    "identity-and-length": _post(
        "Transfer-Encoding: identity\r\nContent-Length: 5\r\n", b"hello"
    ),
    "coding-lookalike": _post("Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
    "coding-after-vtab": _post("Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n"),
    "space-before-colon": _post("Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
    "chunked-in-http10": _post(
        "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n",
        b"0\r\n\r\n",
        "1.0",
    ),
    "chunk-size-negative": _chunked(b"-1\r\nx\r\n0\r\n\r\n"),
    "chunk-size-0x": _chunked(b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-junk": _chunked(b"5 x\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-empty": _chunked(b"\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-bare-lf": _chunked(b"5\nhello\n0\n\n"),
    "chunk-longer-than-size": _chunked(b"3\r\nhello\r\n0\r\n\r\n"),
    "bare-lf-line-ends": b"GET /hello HTTP/1.1\nHost: x\n\n",
    "bare-lf-in-head": b"GET /hello HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n",
    "bare-cr-in-value": b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-B: 2\r\n\r\n",
    "bare-cr-line-end": b"GET /hello HTTP/1.1\rHost: x\r\n\r\n",
}
# A chunk size past 64 bits is no syntax error (h11 and waitress wait for
# that much data), but one that wraps around must not let a request through.
OVERFLOW = _chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n")


def smuggle(backend: Backend, name: str, request: bytes) -> str:
    """Send ``request`` and a request behind it; "" if refused and closed."""
    follower = f"GET /smuggled-{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with backend.connect() as conn:
        conn.send(request + follower)
        outcome = refused_and_closed(conn)
        if outcome and not outcome.endswith("left open"):
            # Served: let what came behind be served too, or not.
            with contextlib.suppress(OSError):
                conn.sock.settimeout(0.5)
                answer(conn)
    return outcome


def run_smuggling(backend: Backend) -> dict[str, str]:
    failures = {}
    for name, request in SMUGGLING.items():
        outcome = smuggle(backend, name, request)
        if outcome:
            failures[name] = outcome
    with backend.connect() as conn:
        conn.send(OVERFLOW + b"GET /smuggled-overflow HTTP/1.1\r\nHost: x\r\n\r\n")
        answer(conn)
    return failures


def reached_the_app(backend: Backend) -> list[str]:
    return [line for line in backend.seen() if "/smuggled" in line]


def test_smuggling_is_refused_and_nothing_behind_reaches_the_app(
    fleet: list[Backend], figures
):
    # The record catches a request that follows an accepted one, where a
    # server serves a second request on a connection at all.
    on_each(fleet, lambda b: smuggle(b, "control", _chunked(b"0\r\n\r\n")))
    pipelining = [b for b in fleet if (b.name, "pipelining") not in KNOWN_LIMITS]
    recorded = [
        b for b in pipelining if reached_the_app(b) == ["GET /smuggled-control"]
    ]
    figures.exact(
        "control: a request behind a valid one reaches the app (the record works)",
        f"{len(recorded)}/{len(pipelining)} backends that pipeline",
        len(recorded) == len(pipelining),
    )
    results = on_each(fleet, run_smuggling)
    refused: dict[str, str] = {}
    for name, failures in results.items():
        refused.update({f"{name} {case}": what for case, what in failures.items()})
    documented = {f"{b} {case}" for b, case in SERVER_LIMITS if case in SMUGGLING}
    measured, ok, short = verdict(refused, documented, len(fleet) * len(SMUGGLING))
    figures.exact(
        "conflicting or duplicated Content-Length, CL with TE, TE not exactly "
        "chunked-last, malformed chunk sizes, bare CR/LF: answered 4xx and "
        f"closed ({len(SMUGGLING)} requests x {len(fleet)} backends)",
        measured,
        ok,
        known_shortfall=short,
    )
    smuggled = {
        f"{b.name} {line.split('/smuggled-')[1]}": "reached the app"
        for b in fleet
        for line in reached_the_app(b)
        if not line.endswith("-control")
    }
    measured, ok, short = verdict(
        smuggled, documented, len(fleet) * (len(SMUGGLING) + 1)
    )
    figures.exact(
        "a request pipelined behind them never reaches the app (requests behind, "
        "a 64-bit-overflowing chunk size included)",
        measured,
        ok,
        known_shortfall=short,
    )


# -- 4. response splitting, shadowed names, log forging, X-Forwarded-* -------------

BAD_VALUES = ("cr", "lf", "crlf", "nul")


def bad_headers(backend: Backend) -> str:
    """ "" when every bad field became a 500 and none was sent."""
    problems = []
    for kind in BAD_VALUES:
        with backend.connect() as conn:
            conn.send(wire.build_request("GET", f"/bad-header?kind={kind}"))
            try:
                response = conn.read_response()
            except (OSError, wire.ConnectionClosed, ValueError) as exc:
                problems.append(f"{kind}: {type(exc).__name__}")
                continue
        names = {name.lower() for name, _ in response.headers}
        if response.status != 500 or names & {"x-bad", "injected"}:
            problems.append(f"{kind}: {response.status} {sorted(names)}")
    return ", ".join(problems)


def test_a_response_field_with_cr_lf_or_nul_is_a_500(fleet: list[Backend], figures):
    failures = {k: str(v) for k, v in on_each(fleet, bad_headers).items() if v}
    measured, ok, short = verdict(failures, set(), len(fleet))
    figures.exact(
        "CR/LF/NUL in a response header from the app -> 500, never emitted "
        "(CR, LF, CRLF, NUL; backends)",
        measured,
        ok,
        known_shortfall=short,
    )


TWINS = [
    ("X-Forwarded-For", "good"),
    ("X_Forwarded_For", "evil"),
    ("X_Only", "underscore"),
]


def underscore_twin(backend: Backend) -> str:
    """ "" when ``X_Forwarded_For`` leaves ``X-Forwarded-For`` alone.

    WSGI: the environ has the dash name's value alone. ASGI: the scope
    keeps both names as sent, for the app to tell apart.
    """
    with backend.connect() as conn:
        seen = conn.request("GET", "/headers", TWINS).json()
    if "scope" in seen:
        pairs = [tuple(pair) for pair in seen["scope"]]
        sent = [(name.lower(), value) for name, value in TWINS]
        return "" if all(pair in pairs for pair in sent) else f"scope {pairs}"
    environ = seen["environ"]
    wanted = {"HTTP_HOST": "localhost", "HTTP_X_FORWARDED_FOR": "good"}
    return "" if environ == wanted else f"environ {environ}"


def test_underscore_names_never_shadow_their_dash_twins(fleet: list[Backend], figures):
    failures = {k: str(v) for k, v in on_each(fleet, underscore_twin).items() if v}
    documented = {b for b, case in SERVER_LIMITS if case == "underscore-twin"}
    measured, ok, short = verdict(failures, documented, len(fleet))
    figures.exact(
        "header names with _ never shadow their - twins in the environ (backends)",
        measured,
        ok,
        known_shortfall=short,
    )


# Percent-encoded, so that every server takes the target; decoded, the path
# holds CR LF (a forged line), ESC (a terminal colour) and NUL.
FORGING_PATH = "/environ/log%0d%0aFORGED%20127.0.0.1%20%22GET%20/admin%1b[31m%00"
ESCAPED = '/environ/log\\x0d\\x0aFORGED 127.0.0.1 \\"GET /admin\\x1b[31m\\x00'


def logged_escaped(backend: Backend) -> str:
    """ "" when the request's access line is one line, its path escaped."""
    with backend.connect() as conn:
        conn.request("GET", FORGING_PATH, [("User-Agent", "agent\tx")])

    def access_lines() -> list[str]:
        log = backend.runner.log().splitlines()
        return [line for line in log if "juggler.access" in line and "log\\x" in line]

    with contextlib.suppress(TimeoutError):
        harness.wait_for(access_lines, timeout=ANSWER_TIMEOUT, message="access line")
    lines = access_lines()
    forged = [line for line in backend.runner.log().splitlines() if "FORGED" in line]
    if len(lines) != 1 or forged != lines or ESCAPED not in lines[0]:
        return f"logged {forged or 'nothing'}"
    return ""


def test_control_characters_in_logged_paths_are_escaped(fleet: list[Backend], figures):
    failures = {k: str(v) for k, v in on_each(fleet, logged_escaped).items() if v}
    measured, ok, short = verdict(failures, set(), len(fleet))
    figures.exact(
        "control characters in logged paths are escaped (--access-log; CR, LF, "
        "ESC, NUL, quote; backends)",
        measured,
        ok,
        known_shortfall=short,
    )


FORWARDED = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")]


def forwarded_trust(backend: Backend) -> str:
    """ "" when X-Forwarded-* is believed from 127.0.0.1 and not 127.0.0.2."""
    seen = {}
    for source in ("127.0.0.1", "127.0.0.2"):
        with backend.connect(source) as conn:
            environ = conn.request("GET", "/environ", FORWARDED).json()
        seen[source] = (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"])
    wanted = {
        "127.0.0.1": ("203.0.113.7", "https"),
        "127.0.0.2": ("127.0.0.2", "http"),
    }
    return "" if seen == wanted else f"saw {seen}"


def test_x_forwarded_is_trusted_only_from_configured_addresses(
    fleet: list[Backend], figures
):
    failures = {k: str(v) for k, v in on_each(fleet, forwarded_trust).items() if v}
    measured, ok, short = verdict(failures, set(), len(fleet))
    figures.exact(
        "X-Forwarded-* trusted only from configured addresses (default "
        "127.0.0.1: believed from it, ignored from 127.0.0.2; backends)",
        measured,
        ok,
        known_shortfall=short,
    )


# -- 3. slow clients -----------------------------------------------------------------

HEADER_TIMEOUT = 2.0
IO_TIMEOUT = 2.0
# The deadlines are short here, so that a scenario sees them pass; a close
# is on time if it comes within this much after its deadline (waitress
# looks at its connections once a loop pass, at least once a second).
DEADLINE_SLACK = 1.5
WATCH = 8.0  # how long a connection is watched for its close
TIMED_ARGS = (
    "--keepalive-timeout",
    "5",
    "--header-timeout",
    str(HEADER_TIMEOUT),
    "--io-timeout",
    str(IO_TIMEOUT),
)
SERVER_LIMITS.update(
    {
        ("meinheld", "header trickle"): (
            "meinheld has no deadline for a head: its read timeout starts "
            "again with each byte, and it has no hook to add one"
        ),
        ("meinheld", "body stall"): (
            "meinheld times a stalled body out with its own read timeout, its "
            "keep-alive one (6 s here when alone), not --io-timeout; and here "
            "its one thread is held by the client that never reads"
        ),
        ("meinheld", "client that never reads"): (
            "the adapter makes meinheld's writes blocking, with --io-timeout as "
            "the send timeout (meinheld's own parked writes crash the worker "
            "under greenlet 3): the worker's only thread waits that long, then "
            "meinheld's C loop parks the write and waits for the client for "
            "good (backends/meinheld.py, environ_fixer)"
        ),
    }
)


def held_by_worker(backend: Backend, client: socket.socket) -> bool:
    """Whether the worker still has the connection of ``client`` open.

    Seen from the worker's descriptors: a server that closed a connection
    it could not finish writing no longer holds it, even while the kernel
    still tries to send what it wrote.
    """
    local = client.getsockname()[:2]
    connections = psutil.Process(backend.pid).net_connections("tcp")
    return any(c.raddr and (c.raddr.ip, c.raddr.port) == local for c in connections)


def watch(
    backend: Backend, client: socket.socket, step: Callable[[], None], began: float
) -> float:
    """Seconds from ``began`` until the worker lets ``client`` go.

    Seen from the worker, for a client that reads nothing (and so sees no
    end). ``step`` runs meanwhile. A connection still in the backlog is not
    held yet: it must be seen held before it counts as let go.
    """
    seen = False
    while time.monotonic() - began < WATCH:
        with contextlib.suppress(OSError):
            step()
        if held_by_worker(backend, client):
            seen = True
        elif seen:
            return time.monotonic() - began
        time.sleep(0.1)
    return float("inf")


def until_closed(sock: socket.socket, step: Callable[[], None], began: float) -> float:
    """Seconds from ``began`` until the server ends the connection.

    Seen by the client: an end of file or a reset, after an answer (408)
    or not. ``step`` runs every tenth of a second meanwhile.
    """
    while time.monotonic() - began < WATCH:
        try:
            step()
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable and not sock.recv(65536):
                return time.monotonic() - began
        except OSError:  # reset, or a broken pipe for the step
            return time.monotonic() - began
    return float("inf")


def header_trickle(backend: Backend) -> float:
    with backend.connect() as conn:
        began = time.monotonic()
        conn.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        trickle = lambda: conn.send(b"X-Slow: 1\r\n")  # noqa: E731
        return until_closed(conn.sock, trickle, began)


def body_stall(backend: Backend) -> float:
    with backend.connect() as conn:
        began = time.monotonic()
        conn.send(_post("Content-Length: 100\r\n", b"only this"))
        return until_closed(conn.sock, lambda: None, began)


def never_reads(backend: Backend) -> float:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        # A small window: the worker's writes stop at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(backend.address)
        began = time.monotonic()
        sock.sendall(wire.build_request("GET", f"/large?size={64 * 1024 * 1024}"))
        return watch(backend, sock, lambda: None, began)


SLOW_CLIENTS = {
    # name: (how, deadline it must be closed at)
    "header trickle": (header_trickle, HEADER_TIMEOUT),
    "body stall": (body_stall, IO_TIMEOUT),
    "client that never reads": (never_reads, IO_TIMEOUT),
}


def test_slow_clients_are_closed_at_their_deadlines(figures):
    with tempfile.TemporaryDirectory(prefix="juggler-hostile-") as directory:
        fleet = start_backends(directory, TIMED_ARGS)
        try:
            runs = [(b, name) for b in fleet for name in SLOW_CLIENTS]
            with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
                closes = list(pool.map(lambda r: SLOW_CLIENTS[r[1]][0](r[0]), runs))
        finally:
            stop_backends(fleet)

    for name, (_, deadline) in SLOW_CLIENTS.items():
        ran = zip(runs, closes, strict=True)
        times = {b.name: t for (b, case), t in ran if case == name}
        late = {
            backend: f"open after {WATCH:g} s" if t == float("inf") else f"{t:.1f} s"
            for backend, t in times.items()
            if not deadline - 0.2 <= t <= deadline + DEADLINE_SLACK
        }
        on_time = [t for b, t in times.items() if b not in late]
        documented = {b for b, case in SERVER_LIMITS if case == name}
        measured, ok, short = verdict(late, documented, len(times))
        if on_time:
            measured += f"; closed at {min(on_time):.1f}-{max(on_time):.1f} s"
        figures.exact(
            f"a {name} is closed at its deadline ({deadline:g} s; backends)",
            measured,
            ok,
            known_shortfall=short,
        )


SLOW_COUNT = 200
LEGIT_CLIENTS = 4
LEGIT_SECONDS = 2.0
SLOW_KINDS = {
    # kind: (what a slow connection sends first, then a byte a second)
    "heads trickled": b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    "bodies trickled": _post("Content-Length: 100000\r\n", b"slow"),
}
SERVER_LIMITS[("wsgiref", "bodies trickled")] = (
    "not met: wsgiref reads a body in a worker thread (32 by default), so 32 "
    "slow bodies hold every thread, each until --io-timeout without a byte; "
    "behind nginx, which buffers request bodies (proxy_request_buffering, on "
    "by default), no slow body reaches a worker"
)


class Slowloris:
    """Up to ``count`` connections, each sending ``start`` then a byte a
    second; opening stops at the first connection the worker leaves in its
    backlog."""

    def __init__(self, backend: Backend, count: int, start: bytes) -> None:
        self.conns: list[wire.Connection] = []
        with contextlib.suppress(OSError):
            while len(self.conns) < count:
                conn = backend.connect()
                self.conns.append(conn)
                conn.send(start)
        self.opened = len(self.conns)
        self.cut = 0  # connections the server closed meanwhile
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(1.0):
            for conn in self.conns:
                try:
                    conn.send(b"s")
                except OSError:
                    self.cut += 1
                    conn.close()
            self.conns = [conn for conn in self.conns if conn.sock.fileno() >= 0]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.conns:
            conn.close()


def legitimate_load(backend: Backend) -> tuple[list[float], int]:
    """Requests on new connections from a few clients: latencies, failures."""
    latencies: list[float] = []
    failures = [0]
    deadline = time.monotonic() + LEGIT_SECONDS

    def client() -> None:
        while time.monotonic() < deadline:
            began = time.monotonic()
            try:
                with backend.connect() as conn:
                    ok = conn.request("GET", "/hello").status == 200
            except (OSError, wire.ConnectionClosed, ValueError):
                ok = False
            latencies.append(time.monotonic() - began)
            failures[0] += not ok

    threads = [threading.Thread(target=client) for _ in range(LEGIT_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures[0]


@pytest.mark.parametrize("kind", list(SLOW_KINDS))
@pytest.mark.parametrize("name", [target.name for target in BACKENDS])
def test_200_slow_connections_leave_legitimate_p99_under_500ms(
    fleet: list[Backend], figures, name: str, kind: str
):
    backend = next(b for b in fleet if b.name == name)
    slow = Slowloris(backend, SLOW_COUNT, SLOW_KINDS[kind])
    try:
        latencies, failed = legitimate_load(backend)
    finally:
        slow.stop()

    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    criterion = (
        f"{SLOW_COUNT} slow connections ({kind}) per worker leave legitimate "
        f"p99 < 500 ms ({name})"
    )
    measured = (
        f"p99 {p99:,.1f} ms over {len(latencies)} requests, {failed} failed; "
        f"{slow.opened} slow connections opened, {slow.cut} cut meanwhile"
    )
    shortfall = SERVER_LIMITS.get((name, kind))
    if shortfall is None:
        figures.timing(criterion, p99, 500, "ms")
        figures.exact(f"{criterion}: failures, connections", measured, failed == 0)
    else:
        # Exactly as documented: the figure fails the day it is met.
        met = p99 < 500 and failed == 0 and slow.opened == SLOW_COUNT
        figures.exact(
            criterion, f"{measured} ({shortfall})", not met, known_shortfall=True
        )


# -- 5. behind nginx: idle-timeout races ---------------------------------------------


def with_pauses(port: int, pauses: list[float]) -> Counter[int | str]:
    """GETs and POSTs through nginx, each after a pause; their outcomes.

    nginx retries a GET that failed on a kept-alive connection, not a
    POST: a race with the worker's idle close shows as a 502 on a POST.
    """
    outcomes: Counter[int | str] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for i, pause in enumerate(pauses):
        time.sleep(pause)
        method, body = ("POST", b"x" * 100) if i % 2 else ("GET", None)
        try:
            conn.request(method, "/echo" if body else "/hello", body=body)
            response = conn.getresponse()
            response.read()
            outcomes[response.status] += 1
        except (OSError, http.client.HTTPException) as exc:
            outcomes[type(exc).__name__] += 1
            conn.close()
    conn.close()
    return outcomes


def through_nginx(backend: Backend, idle: float, pauses: list[float]) -> Counter:
    """Clients pausing around the idle timeouts, through nginx to ``backend``."""
    host, port = backend.address
    nginx = Nginx(f"{host}:{port}", keepalive=8, idle_timeout=idle)
    nginx.start()
    try:
        offsets = [pauses[i:] + pauses[:i] for i in range(CLIENTS_PER_NGINX)]
        with concurrent.futures.ThreadPoolExecutor(CLIENTS_PER_NGINX) as pool:
            results = pool.map(lambda p: with_pauses(nginx.port, p), offsets)
            return sum(results, Counter())
    finally:
        nginx.stop()


# nginx's 60 s and the runner's 75 s, scaled down to fit a scenario.
NGINX_IDLE = 1.0
RUNNER_IDLE = 2.0
CLIENTS_PER_NGINX = 3
# Around nginx's idle timeout and the runner's.
PAUSES = [0.9, 1.0, 1.1, 1.9, 2.0, 2.1]


def idle_close(backend: Backend) -> float:
    """Seconds an idle kept-alive connection lives after a response."""
    with backend.connect() as conn:
        conn.request("GET", "/hello")
        began = time.monotonic()
        conn.sock.settimeout(WATCH)
        with contextlib.suppress(OSError):
            conn.at_eof()
        return time.monotonic() - began


def test_no_502_from_idle_timeout_races_behind_nginx(figures):
    args = ("--keepalive-timeout", str(RUNNER_IDLE))
    with tempfile.TemporaryDirectory(prefix="juggler-hostile-") as directory:
        fleet = start_backends(directory, args)
        try:
            lives = on_each(fleet, idle_close)
            counts = on_each(fleet, lambda b: through_nginx(b, NGINX_IDLE, PAUSES))
        finally:
            stop_backends(fleet)

    early = {
        name: f"closed at {life:.1f} s"
        for name, life in lives.items()
        if not RUNNER_IDLE - 0.05 <= life < WATCH
    }
    no_keepalive = {b.name for b in fleet if (b.name, "keepalive") in KNOWN_LIMITS}
    measured, ok, short = verdict(early, no_keepalive, len(fleet))
    shown = sorted(life for name, life in lives.items() if name not in early)
    figures.exact(
        "the backend's idle timeout outlasts nginx's: an idle kept-alive "
        f"connection lives >= --keepalive-timeout {RUNNER_IDLE:g} s (nginx's "
        f"{NGINX_IDLE:g} s; backends)",
        f"{measured}; closed at {shown[0]:.1f}-{shown[-1]:.1f} s",
        ok,
        known_shortfall=short,
    )
    bad = {
        name: ", ".join(f"{what} x{n}" for what, n in count.items() if what != 200)
        for name, count in counts.items()
        if set(count) != {200}
    }
    total = sum(sum(count.values()) for count in counts.values())
    measured, ok, short = verdict(bad, set(), len(fleet))
    figures.exact(
        "behind nginx with upstream keep-alive: no 502 from idle-timeout races "
        f"(GET and POST after pauses of {min(PAUSES)}-{max(PAUSES)} s around "
        "both idle timeouts; backends)",
        f"{measured}; {total} requests",
        ok,
        known_shortfall=short,
    )


WARNING = "is shorter than nginx's upstream keepalive_timeout"


def test_the_runner_warns_of_an_idle_timeout_shorter_than_nginxs(
    fleet: list[Backend], figures
):
    short = harness.RunnerProcess(
        "hostile_http:wsgi", backend="wsgiref", extra_args=["--keepalive-timeout", "5"]
    )
    try:
        short.start()
        warned = WARNING in short.log()
    finally:
        short.stop()
    silent = [b.name for b in fleet if WARNING not in b.runner.log()]
    figures.exact(
        "the runner warns when its idle timeout is shorter than nginx's "
        "default (60 s): warned at --keepalive-timeout 5, silent at the "
        "default 75 (backends)",
        f"{'warned' if warned else 'NOT warned'}; silent on {len(silent)}/{len(fleet)}",
        warned and len(silent) == len(fleet),
    )
