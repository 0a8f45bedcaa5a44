"""Rendering a report from a small fake result; what fails the run."""

import json

from bench import cli, report, runs, summary
from bench.profiles import FULL, QUICK

META = {
    "date": "2026-01-01T00:00:00+00:00",
    "host": "box",
    "cores": 2,
    "usable_cores": 2,
    "cpu": "a cpu",
    "kernel": "6.1",
    "python": "3.11.2",
    "nginx": "nginx version: nginx/1.22.1",
    "wrk": "wrk 4.1.0",
    "packages": {"juggler": "0.1"},
    "load_average_start": [0.5, 0.4, 0.3],
    "load_average_end": [1.5, 1.4, 1.3],
}


def row(config, rps, round_=1, backend="meinheld", error=None, **extra):
    base = {
        "round": round_,
        "config": config,
        "backend": backend,
        "transport": "unix",
        "workload": "hello",
        "error": error,
    }
    if error is None:
        base.update(rps=rps, p50_ms=1.0, p99_ms=5.0, errors=0, supervisor_cpu_pct=0.1)
    return {**base, **extra}


def fake_result():
    throughput = [
        row("ceiling", 50000.0, backend="-"),
        row("limit", 20000.0),
        row("limit", 22000.0, round_=2),
        row("juggler", 18000.0),
        row("juggler", 18000.0, round_=2),
        row("gunicorn", 18000.0),
        row("gunicorn", 18000.0, round_=2),
        row("circus", 0, error="chaussette: invalid choice: 'gevent'"),
    ]
    process = [
        {
            "measure": "restart",
            "config": "juggler",
            "backend": "meinheld",
            "samples_ms": [150.0, 160.0],
            "median_ms": 155.0,
            "p95_ms": 159.5,
            "mechanism": "promotes its booted spare",
            "error": None,
        },
        {
            "measure": "restart",
            "config": "gunicorn",
            "backend": "meinheld",
            "samples_ms": [10.0, 12.0],
            "median_ms": 11.0,
            "p95_ms": 11.9,
            "error": None,
        },
        {
            "measure": "spawn_idle",
            "config": "gunicorn",
            "processes": 1000,
            "error": "not run: too big",
            "refused": True,
            "spawn_s": None,
        },
        {
            "measure": "spawn_idle",
            "config": "juggler",
            "processes": 1000,
            "spawn_s": 2.0,
            "supervisor_cpu_pct": 0.0,
            "supervisor_rss_mib": 40.0,
            "error": None,
        },
    ]
    return {
        "meta": META,
        "profile": QUICK.to_json(),
        "throughput": throughput,
        "process": process,
        "wall_seconds": 200.0,
    }


def test_summaries_take_the_median_and_spread_of_rounds():
    summaries = {s.config: s for s in summary.summarise(fake_result()["throughput"])}
    limit = summaries["limit"]
    assert limit.rps == 21000.0
    assert limit.spread_pct == 100 * 2000 / 21000
    assert limit.ok == 2
    assert summaries["circus"].ok == 0


def test_report_has_every_row_ratios_and_errors():
    text = report.render(fake_result())
    lines = text.splitlines()
    juggler = next(line for line in lines if "| meinheld | juggler |" in line)
    assert "18,000" in juggler
    assert "0.86x" in juggler  # against the limit: 18000 / 21000
    assert "1.00x" in juggler  # against gunicorn
    circus = next(line for line in lines if "| meinheld | circus |" in line)
    assert "error: chaussette: invalid choice" in circus
    assert "| ceiling |" in text
    assert "not run: too big" in text


def test_summary_says_where_juggler_falls_short():
    text = report.render(fake_result())
    short = text.split("## Where juggler falls short", 1)[1]
    assert "0.86x the req/s of limit" in short
    assert "(meinheld): a killed worker serves again after 155.0 ms" in short
    assert "155.0 ms under juggler, 11.0 ms under gunicorn" in short


def test_report_renders_from_json_round_trip():
    result = json.loads(json.dumps(fake_result()))
    assert report.render(result) == report.render(fake_result())


def test_failures_ignore_reference_rows_and_refusals():
    result = fake_result()
    assert cli.failures(result) == []
    result["throughput"].append(row("juggler", 0, error="juggler exited 2"))
    assert [r["config"] for r in cli.failures(result)] == ["juggler"]


def test_quick_plan_covers_the_four_backends_once():
    cells = runs.plan(QUICK)
    assert cells[0] == runs.Cell("ceiling", "-", "unix", ("hello",))
    backends = {c.backend for c in cells if c.config == "juggler"}
    assert backends == {"wsgiref", "gevent", "meinheld", "uvicorn"}
    assert len(cells) == 1 + 4 * 4


def test_full_plan_adds_tcp_for_hello():
    tcp = [c for c in runs.plan(FULL) if c.transport == "tcp"]
    assert tcp and all(c.workloads == ("hello",) for c in tcp)
    assert {c.config for c in tcp} == {"limit", "juggler", "gunicorn"}
    assert {c.backend for c in tcp} == {"wsgiref", "meinheld"}
    unix = [c for c in runs.plan(FULL) if c.transport == "unix" and c.backend != "-"]
    for cell in unix:
        # circus + chaussette is a reference: hello world only.
        expected = 1 if cell.config == "circus" else 4
        assert len(cell.workloads) == expected, cell
    assert {c.config for c in unix} == {"limit", "juggler", "gunicorn", "circus"}


def test_restart_rows_show_median_p95_and_how_each_restarts():
    text = report.render(fake_result())
    juggler = next(line for line in text.splitlines() if line.startswith("| juggler |"))
    assert "| 2 | 155.0 | 159.5 | promotes its booted spare |" in juggler
    gunicorn = next(
        line for line in text.splitlines() if line.startswith("| gunicorn | meinheld")
    )
    assert "| 11.0 | 11.9 | - |" in gunicorn
