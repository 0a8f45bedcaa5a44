"""The estimate printed before a run: what it counts, and what --skip removes."""

import dataclasses

from bench import cli, estimate, management, runs
from bench.profiles import FULL, QUICK


def test_counts_follow_the_plan_of_the_profile():
    found = estimate.estimate(FULL)
    cells = runs.plan(FULL)
    assert found.cells == FULL.rounds * len(cells)
    assert found.throughput_runs == FULL.rounds * sum(len(c.workloads) for c in cells)
    assert found.kills == len(management.restart_plan(FULL)) * FULL.kills
    # Each wrk run lasts at least its duration: the estimate cannot be less.
    assert found.seconds > found.throughput_runs * FULL.duration


def test_more_rounds_cost_more_and_skipped_parts_cost_nothing():
    one = estimate.estimate(dataclasses.replace(QUICK, rounds=1))
    three = estimate.estimate(dataclasses.replace(QUICK, rounds=3))
    assert three.seconds > one.seconds
    everything_skipped = estimate.estimate(QUICK, frozenset(cli.PARTS))
    assert everything_skipped.seconds == 0
    assert everything_skipped.cells == everything_skipped.kills == 0
    no_throughput = estimate.estimate(QUICK, frozenset({"throughput"}))
    assert 0 < no_throughput.seconds < estimate.estimate(QUICK).seconds


def test_description_names_the_profile_and_minutes():
    text = estimate.estimate(QUICK).describe(QUICK)
    assert text.startswith("profile quick: 1 round(s)")
    assert text.endswith(" min")


def test_skip_leaves_parts_out_of_the_result(monkeypatch):
    ran = []
    monkeypatch.setattr(runs, "run_rounds", lambda p, t: ran.append("t") or [])
    monkeypatch.setattr(management, "run_restarts", lambda p, t: ran.append("r") or [])
    monkeypatch.setattr(cli.system, "describe", lambda nginx, wrk: {})
    skipped = frozenset({"reload", "spawn", "micro"})
    result = cli.measure(QUICK, runs.Tools(nginx="nginx", wrk="wrk"), skipped)
    assert ran == ["t", "r"]
    assert result["skipped"] == sorted(skipped)
    assert result["process"] == [] and result["micro"] == {}
