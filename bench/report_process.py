"""The process-management part of the report: restart, rolling reload,
spawn and idle tables, and where juggler falls short in them.

Shortfalls are of two kinds: juggler worse than a peer measured in the same
run (beyond a slack that covers the noise of these machines), and juggler
missing a target the issue sets (restart median, failed requests across
reloads, idle CPU and RSS).
"""

from __future__ import annotations

from typing import Any

from bench.markdown import cell_error, fmt, table

Row = dict[str, Any]

# field -> (name, unit, absolute slack under which a gap is not reported).
# One clock tick (10 ms) of CPU in a 3 s window reads as 0.33 %.
IDLE_FIELDS = {
    "spawn_s": ("spawn time", " s", 0.05),
    "supervisor_rss_mib": ("idle RSS", " MiB", 1.0),
    "supervisor_cpu_pct": ("idle CPU", " %", 0.5),
}
# A restart is "slower" than a peer's only beyond this: the probe's race
# for the accepting worker and the scheduler add a millisecond or so.
RESTART_SLACK = (1.10, 1.0)  # (factor, ms)
# The reload dip is compared in points of percentage: two 20 s runs on a
# shared machine differ by several points with no reload at all.
DIP_SLACK_POINTS = 5.0

# The targets for juggler's process rows.
RESTART_MEDIAN_MS = 100.0
IDLE_CPU_PCT = {100: 0.5}  # processes -> most idle CPU %
SUPERVISOR_RSS_MIB = 40.0


def restart_table(rows: list[Row]) -> str:
    header = ["supervisor", "backend", "kills", "median ms", "p95 ms"]
    header += ["how it restarts", "note"]
    lines = [
        [
            r["config"],
            r.get("backend", "-"),
            str(len(r.get("samples_ms", []))),
            fmt(r.get("median_ms"), 1),
            fmt(r.get("p95_ms"), 1),
            r.get("mechanism") or "-",
            cell_error(r["error"]) if r.get("error") else "",
        ]
        for r in rows
        if r["measure"] == "restart"
    ]
    return table(header, lines)


def reload_table(rows: list[Row]) -> str:
    header = ["supervisor", "backend", "reloads", "failed requests", "req/s"]
    header += ["req/s, no reload", "dip", "p99 ms", "each reload s", "note"]
    lines = []
    for r in rows:
        if r["measure"] != "reload":
            continue
        base = [r["config"], r["backend"], str(r["reloads"])]
        if r.get("error"):
            lines.append([*base, *["-"] * 6, cell_error(r["error"])])
            continue
        note = "reference" if r.get("reference") else ""
        if r.get("outlasted_run"):
            note = "a reload outlasted the run"
        lines.append(
            [
                *base,
                str(r["failed"]),
                fmt(r["rps"], 0),
                fmt(r["rps_baseline"], 0),
                fmt(r["dip_pct"], 1, " %"),
                fmt(r["p99_ms"], 2),
                ", ".join(f"{t:.2f}" for t in r["reload_s"]) or "-",
                note,
            ]
        )
    return table(header, lines)


def idle_table(rows: list[Row]) -> str:
    header = ["supervisor", "processes", "spawn s", "idle CPU %", "RSS MiB"]
    header.append("note")
    lines = [
        [
            r["config"],
            str(r["processes"]),
            fmt(r.get("spawn_s"), 2),
            fmt(r.get("supervisor_cpu_pct"), 2),
            fmt(r.get("supervisor_rss_mib"), 1),
            cell_error(r["error"]) if r.get("error") else "",
        ]
        for r in rows
        if r["measure"] == "spawn_idle"
    ]
    return table(header, lines)


def shortfalls(process: list[Row]) -> list[str]:
    """Where juggler's process rows do worse than a peer or a target."""
    found = []
    for measure, check in (
        ("restart", _restart_shortfalls),
        ("reload", _reload_shortfalls),
    ):
        rows = [r for r in process if r["measure"] == measure]
        for backend in sorted({r["backend"] for r in rows}):
            same = {r["config"]: r for r in rows if r["backend"] == backend}
            found += check(backend, same)
    found += _idle_shortfalls([r for r in process if r["measure"] == "spawn_idle"])
    return found


def _restart_shortfalls(backend: str, rows: dict[str, Row]) -> list[str]:
    found = []
    mine = rows.get("juggler", {})
    if mine.get("error"):
        found.append(f"restart ({backend}): juggler failed: {mine['error']}")
    a = mine.get("median_ms")
    if a is not None and a > RESTART_MEDIAN_MS:
        found.append(
            f"restart ({backend}): median {a:.1f} ms under juggler, over the "
            f"{RESTART_MEDIAN_MS:.0f} ms target"
        )
    factor, slack = RESTART_SLACK
    for peer, row in rows.items():
        b = row.get("median_ms")
        if peer == "juggler" or a is None or b is None:
            continue
        if a > b * factor + slack:
            found.append(
                f"restart ({backend}): a killed worker serves again after "
                f"{a:.1f} ms under juggler, {b:.1f} ms under {peer}"
            )
    return found


def _reload_shortfalls(backend: str, rows: dict[str, Row]) -> list[str]:
    mine = rows.get("juggler")
    if mine is None:
        return []
    if mine.get("error"):
        return [f"reload ({backend}): juggler failed: {mine['error']}"]
    found = []
    if mine["failed"]:
        found.append(
            f"reload ({backend}): {mine['failed']} failed requests across "
            f"{mine['reloads']} juggler reload(s); the target is 0"
        )
    peer = rows.get("gunicorn", {})
    if not peer.get("error") and peer.get("dip_pct") is not None:
        a, b = mine["dip_pct"], peer["dip_pct"]
        if a is not None and a > b + DIP_SLACK_POINTS:
            found.append(
                f"reload ({backend}): req/s dip {a:.1f} % under juggler's "
                f"reloads, {b:.1f} % under gunicorn's HUP"
            )
    return found


def _idle_shortfalls(rows: list[Row]) -> list[str]:
    found = _idle_targets([r for r in rows if r["config"] == "juggler"])
    for count in sorted({r["processes"] for r in rows}):
        same = {r["config"]: r for r in rows if r["processes"] == count}
        mine = same.get("juggler", {})
        for peer, row in same.items():
            if peer == "juggler" or row.get("error") or mine.get("error"):
                continue
            for field, (what, unit, slack) in IDLE_FIELDS.items():
                a, b = mine.get(field), row.get(field)
                if a is not None and b is not None and a > b * 1.05 + slack:
                    found.append(
                        f"{what} with {count} processes: juggler "
                        f"{a:.2f}{unit}, {peer} {b:.2f}{unit}"
                    )
    return found


def _idle_targets(rows: list[Row]) -> list[str]:
    found = []
    for row in rows:
        count, cpu = row["processes"], row.get("supervisor_cpu_pct")
        rss = row.get("supervisor_rss_mib")
        most = IDLE_CPU_PCT.get(count)
        if most is not None and cpu is not None and cpu > most:
            found.append(
                f"idle CPU with {count} processes: juggler {cpu:.2f} %, over "
                f"the {most:g} % target"
            )
        if rss is not None and rss > SUPERVISOR_RSS_MIB:
            found.append(
                f"RSS with {count} processes: juggler {rss:.1f} MiB, over the "
                f"{SUPERVISOR_RSS_MIB:.0f} MiB target"
            )
    return found
