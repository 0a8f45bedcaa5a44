"""The micro-benchmarks: each run once (untimed) against the real code,
their command line, and their figures read back into the report."""

import json
import subprocess
import sys
from pathlib import Path

from test_bench_report import fake_result

from bench import cli, markdown, report
from bench.micro import run

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def sample():
    # pytest-benchmark 5.3's --benchmark-json from this machine, trimmed.
    return json.loads((HERE / "micro_sample.json").read_text())


def test_every_micro_benchmark_runs_once_and_its_checks_pass():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench/micro",
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-disable",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "8 passed" in done.stdout


def test_command_times_each_benchmark_briefly_into_a_json_file():
    args = run.command("/t/micro.json", 0.1, 5)
    assert args[:4] == [sys.executable, "-m", "pytest", "bench/micro"]
    assert "--benchmark-json=/t/micro.json" in args
    assert "--benchmark-max-time=0.1" in args
    assert "--benchmark-min-rounds=5" in args


def test_parse_keeps_median_iqr_rounds_and_what_each_measures():
    rows = {r["name"]: r for r in run.parse(sample())}
    assert set(rows) >= {
        "test_config_parse_100_watchers",
        "test_status_round_trip",
        "test_meinheld_environ_fixer[unix]",
        "test_wsgiref_request_cycle",
    }
    parse = rows["test_config_parse_100_watchers"]
    assert parse["median_s"] == 0.15137817499999073
    assert parse["group"] == "supervisor"  # pytest-benchmark's None
    assert "100 watchers" in parse["what"]
    fixer = rows["test_meinheld_environ_fixer[unix]"]
    assert fixer["baseline"] == "test_app_called_directly"
    added = run.over_baseline(list(rows.values()), fixer)
    assert added is not None
    assert abs(added - (2.6230000003124587e-06 - 1.511999926151475e-06)) < 1e-15
    assert run.over_baseline(list(rows.values()), parse) is None


def test_durations_in_the_unit_that_suits_them():
    assert markdown.duration(0.151378) == "151 ms"
    assert markdown.duration(1.512e-06) == "1.51 µs"
    assert markdown.duration(1.111e-07, signed=True) == "+111 ns"
    assert markdown.duration(-2e-07, signed=True) == "-200 ns"
    assert markdown.duration(2.5) == "2.5 s"
    assert markdown.duration(None) == "-"


def test_report_has_a_micro_section_with_medians():
    result = fake_result()
    result["micro"] = {"command": [], "error": None, "benchmarks": run.parse(sample())}
    text = report.render(result)
    section = text.split("## Micro-benchmarks", 1)[1].split("\n## ", 1)[0]
    line = next(s for s in section.splitlines() if "config_parse" in s)
    assert "| supervisor | 151 ms |" in line
    fixer = next(s for s in section.splitlines() if "fixer[unix]" in s)
    assert "| +1.11 µs |" in fixer


def test_failed_micro_benchmarks_fail_the_run():
    result = fake_result()
    result["micro"] = {"command": [], "error": None, "benchmarks": []}
    assert cli.failures(result) == []
    result["micro"]["error"] = "pytest exited 1: 1 failed"
    assert [r["config"] for r in cli.failures(result)] == ["micro-benchmarks"]
    assert "error: pytest exited 1: 1 failed" in report.render(result)
