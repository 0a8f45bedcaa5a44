"""The report's PNG charts, drawn from a small fake result."""

from test_bench_report import fake_result

from bench import charts, report, summary

PNG = b"\x89PNG\r\n\x1a\n"


def test_throughput_latency_and_restart_charts_are_drawn_and_linked(tmp_path):
    result = fake_result()
    summaries = summary.summarise(result["throughput"])
    names = charts.draw(summaries, result["process"], str(tmp_path), "run")
    assert names == [
        "run-hello-unix.png",
        "run-latency-hello-unix.png",
        "run-restart.png",
    ]
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    text = report.render(result, names)
    for name in names:
        assert f"![{name}]({name})" in text


def test_spread_of_rounds_is_kept_for_the_whiskers():
    summaries = {s.config: s for s in summary.summarise(fake_result()["throughput"])}
    assert (summaries["limit"].rps_min, summaries["limit"].rps_max) == (20000, 22000)


def test_no_restart_chart_without_a_measured_restart(tmp_path):
    result = fake_result()
    for row in result["process"]:
        if row["measure"] == "restart":
            row.update(median_ms=None, p95_ms=None, error="gunicorn exited 1")
    names = charts.draw(
        summary.summarise(result["throughput"]), result["process"], str(tmp_path), "r"
    )
    assert "r-restart.png" not in names
