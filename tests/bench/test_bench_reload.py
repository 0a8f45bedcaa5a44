"""Rolling reload under load: the schedule, the turnover test, the figures,
the report's rows and shortfalls, and short real runs behind nginx."""

import dataclasses
from pathlib import Path

import pytest

from bench import cli, control, reload, report, report_process, wrk
from bench.profiles import FULL, QUICK

HERE = Path(__file__).parent


def parsed(name):
    return wrk.parse((HERE / f"wrk_{name}.txt").read_text())


def test_reloads_are_spread_evenly_inside_the_run():
    assert reload.schedule(20, 3) == [5.0, 10.0, 15.0]
    assert reload.schedule(8, 1) == [4.0]
    assert reload.schedule(8, 0) == []


def test_profiles_follow_the_issue():
    assert (FULL.reloads, FULL.reload_duration) == (3, 20)
    assert FULL.reload_backends == ("wsgiref", "meinheld")
    assert QUICK.reload_backends == ("wsgiref",)
    assert QUICK.reloads >= 1


def test_turned_over_needs_every_old_process_gone_and_new_ones_ready():
    W = control.Worker
    old = {1, 2, 3}
    assert not reload.turned_over([W(1), W(4), W(5)], old, 2)  # 1 still there
    assert not reload.turned_over([W(4), W(5, ready=False)], old, 2)
    assert not reload.turned_over([W(4), W(5, spare=True)], old, 2)
    assert reload.turned_over([W(4), W(5), W(6, spare=True)], old, 2)


def test_failed_requests_and_dip_come_from_the_two_runs():
    baseline, during = parsed("ok"), parsed("502")
    figures = reload.summarise(baseline, during)
    assert figures["failed"] == 36160  # every 502 is a failed request
    assert figures["rps"] == during.rps
    assert figures["dip_pct"] == pytest.approx(100 * (1 - 36061.70 / 98293.60))
    assert figures["p99_ms_baseline"] == baseline.p99_ms


def reload_row(config, failed=0, dip=2.0, error=None):
    row = {
        "measure": "reload",
        "config": config,
        "backend": "wsgiref",
        "reloads": 3,
        "duration": 20,
        "error": error,
        "reference": config == "circus",
    }
    if error is None:
        row.update(
            failed=failed,
            rps=9000.0,
            rps_baseline=10000.0,
            dip_pct=dip,
            p99_ms=12.5,
            reload_s=[0.5, 0.61, 0.4],
            outlasted_run=False,
        )
    return row


def test_reload_table_shows_failures_dip_and_each_reload():
    rows = [
        reload_row("juggler"),
        reload_row("gunicorn", failed=7),
        reload_row("circus", error="circusctl: timed out"),
    ]
    text = report_process.reload_table(rows)
    lines = text.splitlines()
    assert lines[2] == (
        "| juggler | wsgiref | 3 | 0 | 9,000 | 10,000 | 2.0 % | 12.50 "
        "| 0.50, 0.61, 0.40 |  |"
    )
    assert "| gunicorn | wsgiref | 3 | 7 |" in lines[3]
    assert "error: circusctl: timed out" in lines[4]


def test_failed_requests_under_juggler_and_a_deeper_dip_are_shortfalls():
    rows = {
        "juggler": reload_row("juggler", failed=3, dip=20.0),
        "gunicorn": reload_row("gunicorn", dip=4.0),
    }
    found = report_process.shortfalls(list(rows.values()))
    assert any("3 failed requests across 3 juggler reload(s)" in f for f in found)
    assert any("dip 20.0 % under juggler's reloads, 4.0 % under" in f for f in found)
    # Within the slack, a dip is noise; no failure is no shortfall.
    rows["juggler"] = reload_row("juggler", dip=7.0)
    assert report_process.shortfalls(list(rows.values())) == []


def test_a_failed_juggler_reload_row_fails_the_run_and_circus_does_not():
    from test_bench_report import fake_result

    result = fake_result()
    result["process"].append(reload_row("circus", error="no circusctl"))
    assert cli.failures(result) == []
    result["process"].append(reload_row("juggler", error="juggler exited 1"))
    assert [r["config"] for r in cli.failures(result)] == ["juggler"]
    assert "## Rolling reload under load" in report.render(result)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("config", ["juggler", "gunicorn"])
def test_a_short_real_reload_run_behind_nginx(config):
    tools = cli.find_tools()
    assert not isinstance(tools, str), tools
    profile = dataclasses.replace(QUICK, warmup=1, reload_duration=3, reloads=1)
    row = reload.measure_reload(config, "wsgiref", profile, tools)
    assert row["error"] is None, row["error"]
    assert row["rps"] > 0 and row["rps_baseline"] > 0
    assert len(row["reload_s"]) == 1 and row["reload_s"][0] > 0
    assert 0.5 < row["reload_at_s"][0] < 3.0
    if config == "juggler":
        # The product's claim: a graceful reload fails no request.
        assert row["failed"] == 0, row["during"]
    assert row["commands"]["wrk"][3] == "-d3s"
