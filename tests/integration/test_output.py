"""Output streams end to end: a real juggler, real children writing output."""

from __future__ import annotations

import json
import os
import re

import psutil
import pytest
from harness import SupervisorProcess, wait_for

WRITER = "{python} {apps}/output_writer.py"
CONTINUED = b"[...] "
MAX_LINE = 64 * 1024


@pytest.fixture
def supervisor():
    started: list[SupervisorProcess] = []

    def start(config: str, **kwargs: object) -> SupervisorProcess:
        sup = SupervisorProcess(config)
        started.append(sup)
        sup.start(**kwargs)  # type: ignore[arg-type]
        return sup

    yield start
    for sup in started:
        sup.stop()


def watcher(args: str, stream: str, name: str = "out", extra: str = "") -> str:
    return f"""
[watcher:{name}]
cmd = {WRITER} {args}
graceful_timeout = 5
{stream}
{extra}
"""


def read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def line_count(path: str, count: int):
    return lambda: read(path).count(b"\n") >= count


def test_file_stream_gets_the_lines(supervisor):
    sup = supervisor(
        watcher(
            "lines 100",
            "stdout_stream.class = FileStream\nstdout_stream.filename = {tmp}/out.log",
        )
    )
    path = f"{sup.tmp}/out.log"
    wait_for(line_count(path, 100), message="100 lines in out.log")
    lines = read(path).splitlines()
    pid = sup.serving()[0]
    assert lines == [f"{pid} line {n:05d} ".encode() for n in range(100)]


def test_max_bytes_rotation_keeps_every_line_whole(supervisor):
    # 150 lines of 25 bytes: 40 fit in each 1000-byte file, 4 files hold all.
    sup = supervisor(
        watcher(
            "lines 150 24",
            "stdout_stream.class = FileStream\n"
            "stdout_stream.filename = {tmp}/out.log\n"
            "stdout_stream.max_bytes = 1000\n"
            "stdout_stream.backup_count = 3",
        )
    )
    path = f"{sup.tmp}/out.log"
    files = [f"{path}.3", f"{path}.2", f"{path}.1", path]

    def all_written() -> bool:
        return sum(read(f).count(b"\n") for f in files) == 150

    wait_for(all_written, message="150 lines across out.log and its backups")
    for name in files:
        data = read(name)
        assert 0 < len(data) <= 1000, name
        assert data.endswith(b"\n"), f"{name} ends mid-line"
    pid = sup.serving()[0]
    joined = b"".join(read(f) for f in files).splitlines()
    assert joined == [
        f"{pid} line {n:05d} ".ljust(24, "x").encode() for n in range(150)
    ]


def test_watched_file_is_reopened_after_logrotate_moves_it(supervisor):
    sup = supervisor(
        watcher(
            "ticker {tmp}",
            "stdout_stream.class = WatchedFileStream\n"
            "stdout_stream.filename = {tmp}/out.log",
        )
    )
    path = f"{sup.tmp}/out.log"
    wait_for(line_count(path, 5), message="first ticks")
    os.rename(path, f"{path}.1")  # what logrotate does
    wait_for(line_count(path, 3), message="ticks in a new out.log")
    open(f"{sup.tmp}/stop", "w").close()
    wait_for(lambda: b"last\n" in read(path), message="the last line")

    before, after = read(f"{path}.1").splitlines(), read(path).splitlines()
    assert before and after[-1] == b"last"
    ticks = before + after[:-1]
    # No tick lost or doubled at the moment of the move.
    assert ticks == [f"tick {n:05d}".encode() for n in range(len(ticks))]


def test_flood_with_a_10_mib_line_never_blocks_and_memory_stays_bounded(supervisor):
    sup = supervisor(
        watcher(
            "flood {tmp}",
            "stdout_stream.class = FileStream\nstdout_stream.filename = {tmp}/out.log",
        )
    )
    supervisor_process = psutil.Process(sup.pid)
    baseline = supervisor_process.memory_info().rss
    peak = baseline
    path = f"{sup.tmp}/out.log"

    def finished() -> bool:
        nonlocal peak
        peak = max(peak, supervisor_process.memory_info().rss)
        return os.path.exists(f"{sup.tmp}/done") and read_tail(path) == b"the end\n"

    open(f"{sup.tmp}/go", "w").close()
    # The child finishing at all proves it was never blocked for good; the
    # bound is generous for a shared machine.
    wait_for(finished, timeout=90, message="the child's 50 MiB written")
    grown = (peak - baseline) / 2**20
    print(f"supervisor RSS grew by {grown:.1f} MiB")
    assert grown <= 16

    # The long line arrives cut into marked pieces of MAX_LINE bytes.
    with open(path, "rb") as f:
        pieces = [line for line in f if line.startswith((b"L", CONTINUED + b"L"))]
    assert all(len(p) <= MAX_LINE + len(CONTINUED) + 1 for p in pieces)
    assert not pieces[0].startswith(CONTINUED)
    assert all(p.startswith(CONTINUED) for p in pieces[1:])
    rebuilt = b"".join(p.removeprefix(CONTINUED).rstrip(b"\n") for p in pieces)
    assert rebuilt == b"L" * (10 * 1024 * 1024)


def read_tail(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8))
            return f.read()
    except FileNotFoundError:
        return b""


def test_lines_of_two_processes_never_interleave(supervisor):
    sup = supervisor(
        watcher(
            "lines 3000 300",
            "numprocesses = 2\n"
            "stdout_stream.class = FileStream\n"
            "stdout_stream.filename = {tmp}/out.log",
        )
    )
    path = f"{sup.tmp}/out.log"
    wait_for(line_count(path, 6000), message="6000 lines")
    shape = re.compile(rb"(\d+) line (\d{5}) x+")
    seen: dict[bytes, list[int]] = {}
    for line in read(path).splitlines():
        match = shape.fullmatch(line)
        assert match and len(line) == 300, line[:80]
        seen.setdefault(match[1], []).append(int(match[2]))
    assert sorted(seen.values()) == [list(range(3000))] * 2


def test_time_format_prefixes_each_line(supervisor):
    sup = supervisor(
        watcher(
            "lines 3",
            "stdout_stream.class = FileStream\n"
            "stdout_stream.filename = {tmp}/out.log\n"
            "stdout_stream.time_format = %Y-%m-%d %H:%M:%S",
        )
    )
    path = f"{sup.tmp}/out.log"
    wait_for(line_count(path, 3), message="3 lines")
    pid = sup.serving()[0]
    stamp = rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    for n, line in enumerate(read(path).splitlines()):
        expected = stamp + rb" \[%d\] \| %d line %05d " % (pid, pid, n)
        assert re.fullmatch(expected, line), line


def test_custom_class_receives_circus_style_dicts(supervisor):
    sup = supervisor(
        watcher(
            "lines 50",
            "stdout_stream.class = output_sink.Recorder\n"
            "stdout_stream.path = {tmp}/custom.jsonl\n"
            "stdout_stream.colour = blue",
            extra="[env:out]\nPYTHONPATH = {apps}",
        )
    )
    path = f"{sup.tmp}/custom.jsonl"
    pid = sup.serving()[0]
    expected = "".join(f"{pid} line {n:05d} \n" for n in range(50))

    def received() -> str:
        records = [json.loads(line) for line in read(path).splitlines()]
        return "".join(r["data"] for r in records)

    wait_for(lambda: received() == expected, message="the 50 lines, exactly")
    records = [json.loads(line) for line in read(path).splitlines()]
    assert {(r["pid"], r["name"]) for r in records} == {(pid, "stdout")}
    assert records[0]["options"] == {"colour": "blue"}


def test_stdout_and_fancy_stdout_streams_reach_juggler_stdout(supervisor):
    sup = supervisor(
        watcher(
            "both",
            "stdout_stream.class = StdoutStream\n"
            "stderr_stream.class = FancyStdoutStream\n"
            "stderr_stream.color = green\n"
            "stderr_stream.time_format = %H:%M",
        )
    )
    sup.wait_log("to stderr")
    pid = sup.serving()[0]
    log = sup.log()
    assert "\nto stdout\n" in log
    fancy = re.search(r"\033\[0;32;40m\d\d:\d\d \[(\d+)\] \| to stderr\033\[0m\n", log)
    assert fancy and int(fancy[1]) == pid, log


def test_a_stream_that_cannot_open_keeps_only_its_watcher_stopped(supervisor):
    config = watcher(
        "lines 1",
        "stdout_stream.class = FileStream\n"
        "stdout_stream.filename = {tmp}/missing/out.log",
        name="broken",
    ) + watcher(
        "lines 1",
        "stdout_stream.class = FileStream\nstdout_stream.filename = {tmp}/ok.log",
        name="fine",
    )
    sup = supervisor(config)
    status = sup.ctl_json("status")
    assert status["broken"]["state"] == "stopped"
    assert status["fine"]["state"] == "running"
    lines = [line for line in sup.log().splitlines() if "missing/out.log" in line]
    assert any(
        "broken: stdout_stream (FileStream): cannot open" in line for line in lines
    ), lines
    wait_for(line_count(f"{sup.tmp}/ok.log", 1), message="the fine watcher's line")


def test_output_pipes_are_closed_when_processes_exit(supervisor):
    sup = supervisor(
        watcher(
            "lines 1",
            "numprocesses = 3\n"
            "stdout_stream.class = FileStream\n"
            "stdout_stream.filename = {tmp}/out.log\n"
            "stderr_stream.class = FileStream\n"
            "stderr_stream.filename = {tmp}/err.log",
        )
    )
    wait_for(line_count(f"{sup.tmp}/out.log", 3), message="3 lines")
    arbiter = psutil.Process(sup.pid)
    with_children = arbiter.num_fds()
    for _ in range(3):
        sup.ctl_json("restart", "out")
    wait_for(line_count(f"{sup.tmp}/out.log", 12), message="12 lines")
    # Three restarts of three processes with two pipes each: none left open.
    assert arbiter.num_fds() == with_children
