"""Output streams as units: line splitting, rendering, rotation, back-pressure."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from juggler.supervisor import stream_files, streams
from juggler.supervisor.config_model import StreamConfig
from juggler.supervisor.streams import (
    CONTINUED,
    Console,
    CustomStream,
    FileStream,
    LineSplitter,
    Piece,
    StreamError,
    TimedRotatingFileStream,
    WatchedFileStream,
    open_stream,
    render,
)

# -- splitting ---------------------------------------------------------------


def joined(pieces: list[Piece]) -> bytes:
    return b"".join(p.data for p in pieces)


def test_whole_lines_come_out_as_one_block_and_a_partial_line_waits():
    splitter = LineSplitter(max_line=100)
    assert splitter.feed(b"one\ntwo\nthr") == [Piece(b"one\ntwo\n")]
    assert splitter.feed(b"ee\n") == [Piece(b"three\n")]
    assert splitter.feed(b"") == []
    assert splitter.flush() == []


def test_a_long_line_is_cut_into_marked_pieces_as_it_arrives():
    splitter = LineSplitter(max_line=4)
    assert splitter.feed(b"abc") == []
    assert splitter.feed(b"defghij") == [Piece(b"abcd"), Piece(b"efgh", True)]
    assert splitter.feed(b"k\nxy\n") == [Piece(b"ijk\nxy\n", True)]
    assert splitter.feed(b"z") == []
    assert splitter.flush() == [Piece(b"z")]


def test_a_long_line_inside_a_block_is_cut_too():
    splitter = LineSplitter(max_line=4)
    pieces = splitter.feed(b"ab\nabcdefghij\nc\n")
    assert pieces == [
        Piece(b"ab\n"),
        Piece(b"abcd"),
        Piece(b"efgh", True),
        Piece(b"ij\n", True),
        Piece(b"c\n"),
    ]


def test_a_line_of_exactly_max_line_is_not_cut():
    splitter = LineSplitter(max_line=4)
    assert splitter.feed(b"abcd") == []
    assert splitter.feed(b"\n") == [Piece(b"abcd\n")]


def test_the_splitter_never_holds_more_than_max_line():
    splitter = LineSplitter(max_line=1024)
    total = 0
    for _ in range(1000):  # a 10 MiB line, in pipe-sized reads
        total += len(joined(splitter.feed(b"x" * 10240)))
        assert len(splitter._partial) <= 1024
    assert total + len(joined(splitter.flush())) == 10240 * 1000


def test_bytes_that_are_not_utf8_pass_unchanged():
    data = b"\xff\xfe caf\xe9\n\x00\x01\n"
    assert joined(LineSplitter().feed(data)) == data
    assert render(LineSplitter().feed(data)) == data


# -- rendering ---------------------------------------------------------------


def test_render_marks_continued_pieces_and_prefixes_every_line():
    pieces = [Piece(b"abcd"), Piece(b"ef\ngh\n", True)]
    assert render(pieces) == b"abcd\n" + CONTINUED + b"ef\ngh\n"
    assert render(pieces, b"> ") == (b"> abcd\n> " + CONTINUED + b"ef\n> gh\n")


def test_render_ends_a_last_line_without_newline():
    assert render([Piece(b"no newline")]) == b"no newline\n"


def test_time_prefix_is_circus_shaped():
    prefix = streams.time_prefix("%Y", 42)
    assert prefix == f"{time.strftime('%Y')} [42] | ".encode()
    assert streams.time_prefix(None, 42) == b""


# -- files -------------------------------------------------------------------


def lines(count: int) -> list[Piece]:
    return [Piece(b"".join(b"%09d\n" % n for n in range(count)))]


def test_size_rotation_keeps_lines_whole_and_backup_count_files(tmp_path):
    path = str(tmp_path / "out.log")
    stream = FileStream(path, max_bytes=100, backup_count=2)
    for n in range(50):
        stream.write(1, [Piece(b"%09d\n" % n)])
    stream.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["out.log", "out.log.1", "out.log.2"]
    files = [tmp_path / "out.log.2", tmp_path / "out.log.1", tmp_path / "out.log"]
    contents = [f.read_bytes() for f in files]
    assert all(len(c) <= 100 and c.endswith(b"\n") for c in contents)
    assert b"".join(contents) == b"".join(b"%09d\n" % n for n in range(20, 50))


def test_a_batch_bigger_than_max_bytes_is_spread_over_files(tmp_path):
    path = str(tmp_path / "out.log")
    stream = FileStream(path, max_bytes=100, backup_count=9)
    stream.write(1, lines(25))  # 250 bytes in one batch
    stream.close()
    sizes = [os.path.getsize(f"{path}.{n}") for n in (2, 1)]
    assert sizes == [100, 100]
    assert os.path.getsize(path) == 50


def test_a_line_longer_than_max_bytes_gets_a_file_of_its_own(tmp_path):
    path = str(tmp_path / "out.log")
    stream = FileStream(path, max_bytes=10, backup_count=5)
    stream.write(1, [Piece(b"short\n"), Piece(b"x" * 30 + b"\n"), Piece(b"end\n")])
    stream.close()
    assert (tmp_path / "out.log.2").read_bytes() == b"short\n"
    assert (tmp_path / "out.log.1").read_bytes() == b"x" * 30 + b"\n"
    assert (tmp_path / "out.log").read_bytes() == b"end\n"


def test_no_rotation_without_backup_count(tmp_path):
    path = str(tmp_path / "out.log")
    stream = FileStream(path, max_bytes=10)
    stream.write(1, lines(10))
    stream.close()
    assert os.listdir(tmp_path) == ["out.log"]


def test_a_closed_file_stream_reopens_on_the_next_write(tmp_path):
    path = tmp_path / "out.log"
    stream = FileStream(str(path))
    stream.write(1, [Piece(b"a\n")])
    stream.close()
    stream.write(1, [Piece(b"b\n")])
    stream.close()
    assert path.read_bytes() == b"a\nb\n"


def test_watched_file_follows_its_path_after_a_move(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_files, "WATCH_INTERVAL", 0.0)
    path = tmp_path / "out.log"
    stream = WatchedFileStream(str(path))
    stream.write(1, [Piece(b"before\n")])
    path.rename(tmp_path / "out.log.1")
    stream.write(1, [Piece(b"after\n")])
    path.unlink()
    stream.write(1, [Piece(b"again\n")])
    stream.close()
    assert (tmp_path / "out.log.1").read_bytes() == b"before\n"
    assert path.read_bytes() == b"again\n"


def test_watched_file_checks_the_path_at_most_once_per_interval(tmp_path):
    path = tmp_path / "out.log"
    stream = WatchedFileStream(str(path))
    path.rename(tmp_path / "moved.log")
    stream.write(1, [Piece(b"still in the moved file\n")])
    stream.close()
    assert not path.exists()
    assert (tmp_path / "moved.log").read_bytes() == b"still in the moved file\n"


def test_timed_rotation_renames_with_the_period_and_keeps_backup_count(tmp_path):
    path = str(tmp_path / "out.log")
    stream = TimedRotatingFileStream(path, rotate_when="S", backup_count=2)
    for n in range(4):
        stream.write(1, [Piece(b"%d\n" % n)])
        stream._rotate_at = 0  # the period is over
        stream._started -= 10 * (n + 1)  # give each backup its own name
    stream.write(1, [Piece(b"last\n")])
    stream.close()
    backups = sorted(f for f in os.listdir(tmp_path) if f != "out.log")
    assert len(backups) == 2
    assert all(len(b.split(".")[-1]) == 14 for b in backups)
    assert (tmp_path / "out.log").read_bytes() == b"last\n"


@pytest.mark.parametrize(
    ("when", "interval", "seconds"),
    [("S", 5, 5), ("M", 2, 120), ("H", 1, 3600), ("D", 1, 86400)],
)
def test_timed_rotation_periods(tmp_path, when, interval, seconds):
    stream = TimedRotatingFileStream(
        str(tmp_path / "out.log"), rotate_when=when, rotate_interval=interval
    )
    stream.close()
    assert stream._next_rotation(1000.0) == 1000.0 + seconds


def test_midnight_and_weekly_rotation_fall_on_a_midnight(tmp_path):
    midnight = TimedRotatingFileStream(
        str(tmp_path / "a.log"), rotate_when="midnight", utc=True
    )
    weekly = TimedRotatingFileStream(
        str(tmp_path / "b.log"), rotate_when="W0", utc=True
    )
    midnight.close()
    weekly.close()
    thursday_noon = 43200.0  # 1970-01-01 was a Thursday
    assert midnight._next_rotation(thursday_noon) == 86400.0
    assert weekly._next_rotation(thursday_noon) == 4 * 86400.0  # Monday 5th


# -- open_stream -----------------------------------------------------------------


def test_a_file_that_cannot_be_opened_is_one_line_naming_the_watcher(tmp_path):
    config = StreamConfig("file", "FileStream", filename=str(tmp_path / "no/out"))
    with pytest.raises(StreamError) as caught:
        open_stream("web", "stdout", config)
    assert str(caught.value).startswith("web: stdout_stream (FileStream): cannot open")
    assert "No such file or directory" in str(caught.value)


def test_a_custom_class_that_does_not_exist_is_one_line():
    config = StreamConfig("custom", "nowhere_module.Stream")
    with pytest.raises(StreamError) as caught:
        open_stream("web", "stderr", config)
    assert str(caught.value) == (
        "web: stderr_stream (nowhere_module.Stream): no module named 'nowhere_module'"
    )


# -- never blocking ----------------------------------------------------------------


class Collector:
    """A custom stream as a Circus user writes one."""

    def __init__(self, **options: str) -> None:
        self.calls: list[dict[str, object]] = []
        self.closed = False

    def __call__(self, data: dict[str, object]) -> None:
        self.calls.append(data)

    def close(self) -> None:
        self.closed = True


def test_a_custom_stream_gets_the_exact_bytes_in_its_own_thread():
    target = Collector()
    stream = CustomStream(target, "stdout")

    async def run() -> None:
        splitter = LineSplitter(max_line=4)
        for chunk in (b"ab\nlonger line\n", b"tail"):
            stream.write(7, splitter.feed(chunk))
        stream.write(7, splitter.flush())
        await stream.aclose()

    asyncio.run(run())
    assert target.closed
    assert b"".join(c["data"] for c in target.calls) == b"ab\nlonger line\ntail"
    assert {(c["pid"], c["name"]) for c in target.calls} == {(7, "stdout")}


def test_a_custom_stream_that_falls_behind_drops_and_counts(monkeypatch):
    monkeypatch.setattr(streams, "CUSTOM_QUEUE", 10)
    release = threading.Event()

    def slow(data: dict[str, object]) -> None:
        release.wait(10)

    stream = CustomStream(slow, "stdout")
    dropped = [stream.write(1, [Piece(b"123456\n")]) for _ in range(5)]
    release.set()
    asyncio.run(stream.aclose())
    # The first is being handled or queued; the queue holds 10 bytes at most.
    assert dropped[0] == 0 and sum(dropped) >= 7 * 3


def test_the_console_never_blocks_on_a_reader_that_stopped(monkeypatch):
    monkeypatch.setattr(streams, "CONSOLE_BUFFER", 1024 * 1024)
    read_end, write_end = os.pipe()
    try:
        console = Console(write_end)

        async def flood() -> int:
            dropped = 0
            for _ in range(64):  # 4 MiB into a 64 KiB pipe nobody reads
                dropped += console.write(b"x" * 65535 + b"\n")
            return dropped

        dropped = asyncio.run(flood())
        assert dropped >= 2 * 1024 * 1024
        # The arbiter's stdout itself was left blocking for the children.
        assert os.get_blocking(write_end)
    finally:
        os.close(read_end)
        os.close(write_end)
        os.close(console._fd)


class FullDisk(streams.Stream):
    """A stream whose every write fails, as on a full disk."""

    def write(self, pid: int, pieces: object) -> int:
        raise OSError(28, "No space left on device")


def test_drops_are_counted_and_logged_at_most_once_per_interval(caplog):
    output = streams.OutputStream("web", "stdout", FullDisk())
    for _ in range(3):
        output.write(7, [Piece(b"0123456789\n")])
    output.write(8, [Piece(b"abc\n")])
    dropped = [r.getMessage() for r in caplog.records if "dropped:" in r.message]
    assert dropped == [
        "dropped: web stdout pid=7 11 bytes ([Errno 28] No space left on device)"
    ]
    asyncio.run(output.close())  # what was dropped since is told on close
    dropped = [r.getMessage() for r in caplog.records if "dropped:" in r.message]
    assert dropped[1:] == [
        "dropped: web stdout pid=7 22 bytes ([Errno 28] No space left on device)",
        "dropped: web stdout pid=8 4 bytes ([Errno 28] No space left on device)",
    ]
