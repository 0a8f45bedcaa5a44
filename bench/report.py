"""From raw rows to the Markdown report (tables, ratios, shortfalls).

Everything here is a pure function of the result dictionary that is also
written as JSON, so that a report can be rendered again from a JSON file
and the tests can render one from a small fake result.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.profiles import ALL_BACKENDS, ALL_WORKLOADS, WORKLOAD_TITLES
from bench.stacks import CONFIGS

# Below this, a ratio is called a shortfall. Rates drift by up to 15 %
# between rounds on these machines (shared/PEERS.md); the spread column
# says how much of a gap is noise.
SHORTFALL = 0.95

# field -> (name, unit, absolute slack under which a gap is not reported).
# One clock tick (10 ms) of CPU in a 3 s window reads as 0.33 %.
IDLE_FIELDS = {
    "spawn_s": ("spawn time", " s", 0.05),
    "supervisor_rss_mib": ("idle RSS", " MiB", 1.0),
    "supervisor_cpu_pct": ("idle CPU", " %", 0.5),
}

NOTES = """\
- Restart: the oldest serving worker, at least 1.5 s old, is SIGKILLed
  under one keep-alive client through nginx; a probe then opens fresh
  connections straight on the socket until a worker that was not serving
  before answers 200. juggler keeps one booted spare per runner watcher
  (its default) and promotes it; gunicorn forks its master; circus polls
  (its default `check_delay = 5`) and then execs a new worker. Each kill
  waits until every worker and spare is back and ready.
- Spawn: from the supervisor's exec until N processes are its children,
  so it includes the supervisor's own start-up. juggler and circus spawn
  `sleep`; gunicorn can only spawn its workers (idle sync workers here).
- CPU % and RSS are of the supervisor process alone, never its workers.
- The 10 ms wait blocks a meinheld worker under every supervisor alike:
  meinheld has no cooperative sleep.
- Differences under about 15 % between single rounds are noise on these
  shared machines; the spread column shows it when there are rounds."""

Result = dict[str, Any]
Row = dict[str, Any]
Key = tuple[str, str, str, str]  # transport, workload, backend, config


@dataclass(frozen=True)
class Summary:
    """One configuration's figures across rounds."""

    key: Key
    rounds: int
    ok: int
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    spread_pct: float | None
    cpu_pct: float | None
    rss_mib: float | None
    error: str | None

    @property
    def config(self) -> str:
        return self.key[3]


def _median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def _order(key: Key) -> tuple[int, int, int, int]:
    transport, workload, backend, config = key
    return (
        0 if transport == "unix" else 1,
        _index(ALL_WORKLOADS, workload),
        _index(("-", *ALL_BACKENDS), backend),
        _index(CONFIGS, config),
    )


def _index(items: tuple[str, ...], item: str) -> int:
    return items.index(item) if item in items else len(items)


def summarise(rows: list[Row]) -> list[Summary]:
    groups: dict[Key, list[Row]] = {}
    for row in rows:
        key = (row["transport"], row["workload"], row["backend"], row["config"])
        groups.setdefault(key, []).append(row)
    return [_summary(key, groups[key]) for key in sorted(groups, key=_order)]


def _summary(key: Key, rows: list[Row]) -> Summary:
    good = [r for r in rows if not r.get("error")]
    rates = [float(r["rps"]) for r in good]
    median = _median(rates)
    spread = None
    if median and len(rates) > 1:
        spread = 100 * (max(rates) - min(rates)) / median
    errors = [r["error"] for r in rows if r.get("error")]
    return Summary(
        key=key,
        rounds=len(rows),
        ok=len(good),
        rps=median,
        p50_ms=_median(r["p50_ms"] for r in good),
        p99_ms=_median(r["p99_ms"] for r in good),
        errors=sum(int(r["errors"]) for r in good),
        spread_pct=spread,
        cpu_pct=_median(r.get("supervisor_cpu_pct") for r in good),
        rss_mib=_median(r.get("supervisor_rss_mib") for r in good),
        error=errors[0] if errors else None,
    )


def ratio(summaries: list[Summary], key: Key, against: str) -> float | None:
    """req/s of ``key`` over req/s of config ``against`` in the same cell."""
    by_key = {s.key: s for s in summaries}
    mine = by_key.get(key)
    other = by_key.get((*key[:3], against))
    if mine is None or other is None or not mine.rps or not other.rps:
        return None
    return mine.rps / other.rps


# -- formatting ----------------------------------------------------------------


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def _cell_error(text: str) -> str:
    one_line = " ".join(text.split()).replace("|", "/")
    return f"error: {one_line[:160]}"


def table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def throughput_table(summaries: list[Summary]) -> str:
    header = ["transport", "workload", "backend", "configuration", "req/s"]
    header += ["p50 ms", "p99 ms", "errors", "spread", "rounds ok"]
    header += ["x limit", "x gunicorn"]
    lines = []
    for s in summaries:
        transport, workload, backend, config = s.key
        base = [transport, workload, backend, config]
        if s.ok == 0:
            lines.append([*base, _cell_error(s.error or "?"), *["-"] * 7])
            continue
        lines.append(
            [
                *base,
                fmt(s.rps, 0),
                fmt(s.p50_ms, 2),
                fmt(s.p99_ms, 2),
                str(s.errors),
                fmt(s.spread_pct, 1, " %"),
                f"{s.ok}/{s.rounds}",
                fmt(ratio(summaries, s.key, "limit"), 2, "x"),
                fmt(ratio(summaries, s.key, "gunicorn"), 2, "x"),
            ]
        )
    return table(header, lines)


def ratio_table(summaries: list[Summary]) -> str:
    header = ["transport", "workload", "backend", "juggler req/s"]
    header += ["juggler / limit", "juggler / gunicorn", "juggler / circus"]
    lines = []
    for s in summaries:
        if s.config != "juggler":
            continue
        shown = fmt(s.rps, 0) if s.ok else _cell_error(s.error or "?")
        lines.append(
            [
                *s.key[:3],
                shown,
                fmt(ratio(summaries, s.key, "limit"), 2, "x"),
                fmt(ratio(summaries, s.key, "gunicorn"), 2, "x"),
                fmt(ratio(summaries, s.key, "circus"), 2, "x"),
            ]
        )
    return table(header, lines)


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
            _cell_error(r["error"]) if r.get("error") else "",
        ]
        for r in rows
        if r["measure"] == "restart"
    ]
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
            _cell_error(r["error"]) if r.get("error") else "",
        ]
        for r in rows
        if r["measure"] == "spawn_idle"
    ]
    return table(header, lines)


def load_table(summaries: list[Summary]) -> str:
    header = ["supervisor", "backend", "transport", "CPU % (supervisor only)"]
    header.append("RSS MiB")
    lines = [
        [s.config, s.key[2], s.key[0], fmt(s.cpu_pct, 2), fmt(s.rss_mib, 1)]
        for s in summaries
        if s.key[1] == "hello"
        and s.config in ("limit", "juggler", "gunicorn", "circus")
        and s.ok
    ]
    return table(header, lines)


# -- the summary ---------------------------------------------------------------


def shortfalls(summaries: list[Summary], process: list[Row]) -> list[str]:
    """Every place where juggler does worse than a peer or than the limit."""
    found = []
    for s in summaries:
        if s.config != "juggler":
            continue
        where = f"{s.key[2]}, {s.key[1]}, {s.key[0]}"
        if s.error:
            found.append(
                f"juggler failed ({s.rounds - s.ok}/{s.rounds} rounds) on "
                f"{where}: {s.error}"
            )
        for peer in ("limit", "gunicorn"):
            value = ratio(summaries, s.key, peer)
            if value is not None and value < SHORTFALL:
                found.append(
                    f"{where}: juggler serves {value:.2f}x the req/s of "
                    f"{peer} (spread {fmt(s.spread_pct, 1, ' %')})"
                )
    found += _process_shortfalls(process)
    return found


def _process_shortfalls(process: list[Row]) -> list[str]:
    found = []
    restarts = [r for r in process if r["measure"] == "restart"]
    for backend in sorted({r["backend"] for r in restarts}):
        same = {r["config"]: r for r in restarts if r["backend"] == backend}
        found += _restart_shortfalls(backend, same)
    found += _idle_shortfalls([r for r in process if r["measure"] == "spawn_idle"])
    return found


def _restart_shortfalls(backend: str, rows: dict[str, Row]) -> list[str]:
    found = []
    mine = rows.get("juggler", {})
    if mine.get("error"):
        found.append(f"restart ({backend}): juggler failed: {mine['error']}")
    for peer, row in rows.items():
        a, b = mine.get("median_ms"), row.get("median_ms")
        if peer != "juggler" and a is not None and b is not None and a > b:
            found.append(
                f"restart ({backend}): a killed worker serves again after "
                f"{a:.1f} ms under juggler, {b:.1f} ms under {peer}"
            )
    return found


def _idle_shortfalls(rows: list[Row]) -> list[str]:
    found = []
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


def render(result: Result, charts: list[str] | None = None) -> str:
    meta, profile = result["meta"], result["profile"]
    summaries = summarise(result["throughput"])
    process = result["process"]
    falls = shortfalls(summaries, process)
    parts = [
        f"# juggler benchmark, {meta['date']} on {meta['host']}",
        _preamble(meta, profile, result.get("wall_seconds")),
        "## Throughput behind nginx (median of rounds)",
        throughput_table(summaries),
        "## juggler against the limit and the peers",
        ratio_table(summaries),
        "## Restart: SIGKILL one worker, time until a new pid serves a 200",
        restart_table(process),
        "## Spawn and idle (supervisor process only)",
        idle_table(process),
        "## Supervisor under the hello-world load",
        load_table(summaries),
        "## Where juggler falls short",
        "\n".join(f"- {line}" for line in falls)
        if falls
        else f"- Nowhere in this run: every juggler row is at least {SHORTFALL:.2f}x "
        "the limit and gunicorn, and its process rows match or beat the peers.",
    ]
    parts += ["## Notes", NOTES]
    if charts:
        parts += ["## Charts", "\n".join(f"![{c}]({c})" for c in charts)]
    return "\n\n".join(parts) + "\n"


def _preamble(meta: dict[str, Any], profile: dict[str, Any], wall: Any) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in meta["packages"].items())
    titles = "; ".join(f"{w}: {WORKLOAD_TITLES[w]}" for w in profile["workloads"])
    return "\n".join(
        [
            f"Profile `{profile['name']}`: {profile['rounds']} round(s) of "
            f"{profile['duration']:g} s runs after a {profile['warmup']:g} s warm-up, "
            "`wrk -t2 -c64 --latency`, workers = cores. Wall time "
            f"{fmt(wall, 0, ' s')}.",
            "",
            f"Machine: {meta['cores']} cores ({meta['cpu']}), kernel {meta['kernel']}, "
            f"load average at start {meta['load_average_start'][0]:.2f}, at end "
            f"{meta.get('load_average_end', [0.0])[0]:.2f}. Python {meta['python']}, "
            f"{meta['nginx']}, {meta['wrk']}.",
            "",
            f"Packages: {packages}.",
            "",
            f"Workloads: {titles}. Configurations: ceiling = nginx alone "
            "(`return 200`, hello only); limit = a bare parent that binds the "
            "socket and spawns `runner serve --fd` workers; juggler + runner; "
            "gunicorn with the matching worker; circus + chaussette, a reference "
            "where it installs (its errors are shown and do not fail the run).",
        ]
    )
