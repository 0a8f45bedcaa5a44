"""From raw rows to the Markdown report (tables, ratios, shortfalls).

Everything here is a pure function of the result dictionary that is also
written as JSON, so that a report can be rendered again from a JSON file
and the tests can render one from a small fake result.
"""

from __future__ import annotations

from typing import Any

from bench import report_process
from bench.markdown import cell_error, duration, fmt, table
from bench.micro.run import over_baseline
from bench.profiles import WORKLOAD_TITLES
from bench.summary import Summary, ratio, summarise

# Below this, a ratio is called a shortfall. Rates drift by up to 15 %
# between rounds on these machines (shared/PEERS.md); the spread column
# says how much of a gap is noise.
SHORTFALL = 0.95
# juggler's p99 is called worse than gunicorn's beyond this factor (p99 is
# noisier than the rate).
P99_SLACK = 1.15
# The target: the supervisor's CPU under load, % of one core.
LOAD_CPU_PCT = 1.0

NOTES = """\
- Restart: the oldest serving worker, at least 1.5 s old, is SIGKILLed
  under one keep-alive client through nginx; a probe then opens fresh
  connections straight on the socket until a worker that was not serving
  before answers 200. juggler keeps one booted spare per runner watcher
  (its default) and promotes it; gunicorn forks its master; circus polls
  (its default `check_delay = 5`) and then execs a new worker. Each kill
  waits until every worker and spare is back and ready.
- Rolling reload: after a warm-up, wrk runs twice on the same stack at 64
  connections through nginx, once undisturbed and once with the reloads
  evenly spaced in it: `juggler reload web` (it returns once each new
  process was ready before an old one was stopped), SIGHUP to gunicorn's
  master, `circusctl reload web --waiting`. Failed requests are wrk's
  socket errors and timeouts plus non-2xx answers (nginx answers 502 when
  the upstream refuses or cuts a request); the dip is
  1 - req/s(with reloads) / req/s(undisturbed); each reload is timed from
  the command until every worker is a new one and the old ones are gone.
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


def throughput_table(summaries: list[Summary]) -> str:
    header = ["transport", "workload", "backend", "configuration", "req/s"]
    header += ["p50 ms", "p99 ms", "errors", "spread", "rounds ok"]
    header += ["x limit", "x gunicorn"]
    lines = []
    for s in summaries:
        transport, workload, backend, config = s.key
        base = [transport, workload, backend, config]
        if s.ok == 0:
            lines.append([*base, cell_error(s.error or "?"), *["-"] * 7])
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
        shown = fmt(s.rps, 0) if s.ok else cell_error(s.error or "?")
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


def micro_table(micro: dict[str, Any] | None) -> str:
    if not micro:
        return "- Not run in this report."
    header = ["benchmark", "group", "median", "IQR", "rounds", "over baseline"]
    header.append("what it measures")
    rows = micro["benchmarks"]
    lines = [
        [
            f"`{r['name']}`",
            r["group"],
            duration(r["median_s"]),
            duration(r["iqr_s"]),
            str(r["rounds"]),
            duration(over_baseline(rows, r), signed=True),
            r["what"],
        ]
        for r in rows
    ]
    text = table(header, lines)
    if micro.get("error"):
        text += f"\n\n- {cell_error(micro['error'])}"
    return text


# -- the summary ---------------------------------------------------------------


def shortfalls(summaries: list[Summary], process: list[Row]) -> list[str]:
    """Every place where juggler does worse than a peer, the limit or a
    target of the issue."""
    found = []
    for s in summaries:
        if s.config == "juggler":
            found += _throughput_shortfalls(summaries, s)
    found += report_process.shortfalls(process)
    return found


def _throughput_shortfalls(summaries: list[Summary], s: Summary) -> list[str]:
    where = f"{s.key[2]}, {s.key[1]}, {s.key[0]}"
    found = []
    if s.error:
        found.append(
            f"juggler failed ({s.rounds - s.ok}/{s.rounds} rounds) on {where}: "
            f"{s.error}"
        )
    for peer in ("limit", "gunicorn"):
        value = ratio(summaries, s.key, peer)
        if value is not None and value < SHORTFALL:
            found.append(
                f"{where}: juggler serves {value:.2f}x the req/s of {peer} "
                f"(spread {fmt(s.spread_pct, 1, ' %')})"
            )
    peer_p99 = next(
        (o.p99_ms for o in summaries if o.key == (*s.key[:3], "gunicorn")), None
    )
    if s.p99_ms is not None and peer_p99 and s.p99_ms > peer_p99 * P99_SLACK:
        found.append(
            f"{where}: p99 {s.p99_ms:.2f} ms under juggler, {peer_p99:.2f} ms "
            "under gunicorn"
        )
    if s.cpu_pct is not None and s.cpu_pct > LOAD_CPU_PCT:
        found.append(
            f"{where}: the juggler process used {s.cpu_pct:.2f} % CPU under "
            f"load, over the {LOAD_CPU_PCT:g} % target"
        )
    return found


def render(result: Result, charts: list[str] | None = None) -> str:
    meta, profile = result["meta"], result["profile"]
    summaries = summarise(result["throughput"])
    process = result["process"]
    sections = [
        ("Throughput behind nginx (median of rounds)", throughput_table(summaries)),
        ("juggler against the limit and the peers", ratio_table(summaries)),
        (
            "Restart: SIGKILL one worker, time until a new worker serves a 200",
            report_process.restart_table(process),
        ),
        (
            "Rolling reload under load (wrk -c64 through nginx)",
            report_process.reload_table(process),
        ),
        (
            "Spawn and idle (supervisor process only)",
            report_process.idle_table(process),
        ),
        ("Supervisor under the hello-world load", load_table(summaries)),
        (
            "Micro-benchmarks (pytest-benchmark, time per call)",
            micro_table(result.get("micro")),
        ),
        ("Where juggler falls short", _falls(shortfalls(summaries, process))),
        ("Notes", NOTES),
    ]
    if charts:
        sections.append(("Charts", "\n".join(f"![{c}]({c})" for c in charts)))
    parts = [
        f"# juggler benchmark, {meta['date']} on {meta['host']}",
        _preamble(meta, profile, result),
    ]
    for title, body in sections:
        parts += [f"## {title}", body]
    return "\n\n".join(parts) + "\n"


def _falls(found: list[str]) -> str:
    if found:
        return "\n".join(f"- {line}" for line in found)
    return (
        f"- Nowhere in this run: every juggler row is at least {SHORTFALL:.2f}x "
        "the limit and gunicorn, and its process rows match or beat the peers "
        "and the targets."
    )


def _preamble(
    meta: dict[str, Any], profile: dict[str, Any], result: dict[str, Any]
) -> str:
    wall, predicted = result.get("wall_seconds"), result.get("estimated_seconds")
    skipped = result.get("skipped") or []
    left_out = f" Left out of this run: {', '.join(skipped)}." if skipped else ""
    packages = ", ".join(f"{k} {v}" for k, v in meta["packages"].items())
    titles = "; ".join(f"{w}: {WORKLOAD_TITLES[w]}" for w in profile["workloads"])
    return "\n".join(
        [
            f"Profile `{profile['name']}`: {profile['rounds']} round(s) of "
            f"{profile['duration']:g} s runs after a {profile['warmup']:g} s warm-up, "
            "`wrk -t2 -c64 --latency`, workers = cores. Wall time "
            f"{fmt(wall, 0, ' s')} (estimated {fmt(predicted, 0, ' s')})."
            f"{left_out}",
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
