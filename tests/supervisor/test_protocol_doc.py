"""docs/protocol.md is what client authors read: keep it true of the code."""

from __future__ import annotations

import re
from pathlib import Path

from juggler.supervisor import control
from juggler.supervisor.commands import Commands
from juggler.supervisor.events import TOPICS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def _table_names(section: str) -> set[str]:
    """The backquoted names in the first column of a section's table."""
    body = DOC.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in body.splitlines():
        cells = line.split("|")
        if len(cells) > 2:
            names.update(re.findall(r"`([a-z_]+)`", cells[1]))
    return names


def test_every_command_is_documented_and_no_other() -> None:
    commands = Commands(arbiter=None)  # type: ignore[arg-type]
    assert _table_names("Commands") == {*commands.table, "events"}


def test_every_event_topic_is_documented_and_no_other() -> None:
    assert _table_names("The event stream") == set(TOPICS)


def test_the_limits_quoted_are_the_code_s() -> None:
    text = " ".join(DOC.split())
    assert f"at most {control.MAX_FRAME // 1024} KiB" in text
    assert f"At most {control.MAX_IN_FLIGHT} requests" in text
    assert f"{control.IDLE_TIMEOUT:g} s is closed" in text
    assert f"newest {control.EVENT_QUEUE:,} events" in text
    assert f"within {control.AUTH_TIMEOUT:g} s" in text
    assert f"at most {control.MAX_TCP_CONNECTIONS} TCP connections" in text
