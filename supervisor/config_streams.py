"""``stdout_stream.*`` / ``stderr_stream.*``: where a watcher's output goes.

Circus's stream classes are named without a prefix (``FileStream``) or with
it (``circus.stream.FileStream``); each becomes a ``kind`` the arbiter
implements. Any other dotted name is a custom class that receives every key
as a constructor argument, as Circus did. A stream with a ``filename`` and
no ``class`` is a ``FileStream``, again as in Circus.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

from juggler.supervisor.config_model import StreamConfig
from juggler.supervisor.config_sections import Reader
from juggler.supervisor.errors import Where
from juggler.supervisor.ini import Entry

BUILTIN_STREAMS = {
    "filestream": "file",
    "watchedfilestream": "watched_file",
    "timedrotatingfilestream": "timed_rotating_file",
    "stdoutstream": "stdout",
    "fancystdoutstream": "fancy_stdout",
}
# The keys each built-in kind takes; others are warned about.
STREAM_KEYS = {
    "file": {"filename", "max_bytes", "backup_count", "time_format"},
    "watched_file": {"filename", "time_format"},
    "timed_rotating_file": {
        "filename", "backup_count", "time_format", "rotate_when",
        "rotate_interval", "utc",
    },
    "stdout": set(),
    "fancy_stdout": {"color", "time_format"},
}  # fmt: skip
ROTATE_WHEN = re.compile(r"[SMHD]|W[0-6]|midnight", re.IGNORECASE)
CIRCUS_PREFIXES = ("circus.stream.file_stream.", "circus.stream.")


def read_stream(
    prefix: str, entries: list[Entry], reader: Reader
) -> StreamConfig | None:
    """The stream the ``prefix.*`` entries describe, or None if unusable."""
    by_key = {e.key.lower().partition(".")[2]: e for e in entries}
    cls_entry = by_key.pop("class", None)
    cls = reader.text(cls_entry) if cls_entry else None
    where = (cls_entry or entries[0]).where
    if cls is None and cls_entry is not None:
        return None
    if cls is None:
        if "filename" not in by_key:
            reader.problems.error(where, f"{prefix} needs a class or a filename")
            return None
        cls = "FileStream"
    return _classify(prefix, cls, by_key, cls_entry, reader)


def _classify(
    prefix: str,
    cls: str,
    by_key: dict[str, Entry],
    cls_entry: Entry | None,
    reader: Reader,
) -> StreamConfig | None:
    short = cls
    for circus_prefix in CIRCUS_PREFIXES:
        short = short.removeprefix(circus_prefix)
    kind = BUILTIN_STREAMS.get(short.lower())
    if short == "QueueStream" and cls_entry is not None:
        reader.problems.warn(
            cls_entry.where,
            "ignored: QueueStream keeps output inside Circus's process; "
            "juggler has none (the output is not captured)",
        )
        return None
    if kind is None and "." not in short:
        where = cls_entry.where if cls_entry else next(iter(by_key.values())).where
        reader.problems.error(
            where,
            f"unknown stream class {cls!r} (FileStream, WatchedFileStream, "
            "TimedRotatingFileStream, StdoutStream, FancyStdoutStream, "
            "or a dotted module.Class)",
        )
        return None
    if kind is None:
        options = {k: reader.text(e) or "" for k, e in by_key.items()}
        return StreamConfig("custom", cls, options=MappingProxyType(options))
    where = cls_entry.where if cls_entry else by_key["filename"].where
    return _builtin(kind, cls, by_key, where, reader)


def _builtin(
    kind: str, cls: str, by_key: dict[str, Entry], where: Where, reader: Reader
) -> StreamConfig | None:
    wanted = STREAM_KEYS[kind]
    known = [e for k, e in by_key.items() if k in wanted]
    prefix = known[0].key.lower().partition(".")[0] + "." if known else ""
    values, _ = reader.table(known, StreamConfig, prefix)
    for key, entry in by_key.items():
        if key not in wanted:
            reader.problems.warn(entry.where, f"ignored: {cls} has no option {key}")
    if "filename" in wanted and "filename" not in values:
        if "filename" not in by_key:
            reader.problems.error(where, f"{cls} needs a filename")
        return None
    return _rotate_checked(StreamConfig(kind, cls, **values), by_key, reader)


def _rotate_checked(
    stream: StreamConfig, by_key: dict[str, Any], reader: Reader
) -> StreamConfig | None:
    when = stream.rotate_when
    if when is not None and not ROTATE_WHEN.fullmatch(when):
        reader.problems.error(
            by_key["rotate_when"].where,
            f"expected S, M, H, D, W0-W6 or midnight, got {when!r}",
        )
        return None
    return stream
