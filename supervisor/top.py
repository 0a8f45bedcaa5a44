"""``juggler top``: a live view of the watchers, their processes and sockets.

It is a client of the control channel like every other command: once a
second it asks for ``status``, ``stats`` and ``listsockets`` and redraws.
``q`` quits; a resized terminal is redrawn to its new size.
"""

from __future__ import annotations

import contextlib
import curses
import time
from typing import Any

from juggler.supervisor.client import Client

REFRESH_MS = 1000
HEADER = (
    f"{'WATCHER':<14}{'WID':>4}{'PID':>8}{'CPU%':>7}{'RSS MiB':>9}"
    f"{'FDS':>6}{'CONNS':>6}{'AGE':>9}"
)


def run(client: Client) -> int:
    """Show the live view until ``q``; return the exit code."""
    return int(curses.wrapper(_loop, client))


def _loop(screen: curses.window, client: Client) -> int:
    curses.curs_set(0)
    screen.timeout(REFRESH_MS)
    while True:
        view = _snapshot(client)
        _draw(screen, view)
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return 0
        if key == curses.KEY_RESIZE:
            curses.update_lines_cols()
            screen.clear()


def _snapshot(client: Client) -> dict[str, Any]:
    return {
        "status": client.call("status"),
        "stats": {row["pid"]: row for row in client.call("stats")},
        "sockets": client.call("listsockets"),
        "time": time.strftime("%H:%M:%S"),
    }


def lines(view: dict[str, Any]) -> list[tuple[str, bool]]:
    """The screen's text, line by line, with whether a line is a heading."""
    out: list[tuple[str, bool]] = [
        (f"juggler top - {view['time']} - q quits", True),
        ("", False),
        (HEADER, True),
    ]
    for name, watcher in view["status"].items():
        processes = watcher["processes"]
        serving = [p for p in processes if not p.get("spare")]
        out.append(
            (
                f"{name:<14}{watcher['state']} {len(serving)}/"
                f"{watcher['numprocesses']} processes, "
                f"{watcher['restarts']} restarts",
                False,
            )
        )
        out += [
            (_process_line(p, view["stats"].get(p["pid"])), False) for p in processes
        ]
    out += [("", False), ("SOCKETS", True)]
    out += [
        (f"{s['name']:<14}fd={s['fd']:<5}{s['location']}", False)
        for s in view["sockets"]
    ]
    return out


def _process_line(process: dict[str, Any], stats: dict[str, Any] | None) -> str:
    label = "spare" if process.get("spare") else ""
    start = f"{label:<14}{process['wid']:>4}{process['pid']:>8}"
    if stats is None:
        return start + f"{'-':>7}{'-':>9}{'-':>6}{'-':>6}{process['age']:>8.0f}s"
    return start + (
        f"{stats['cpu']:>7.1f}{stats['rss'] / 2**20:>9.1f}"
        f"{stats['open_files']:>6}{stats['connections']:>6}{process['age']:>8.0f}s"
    )


def _draw(screen: curses.window, view: dict[str, Any]) -> None:
    screen.erase()
    height, width = screen.getmaxyx()
    for row, (text, heading) in enumerate(lines(view)[: max(0, height - 1)]):
        attr = curses.A_BOLD if heading else curses.A_NORMAL
        # On a terminal too small for the line, show what fits.
        with contextlib.suppress(curses.error):
            screen.addnstr(row, 0, text, max(0, width - 1), attr)
    screen.refresh()
