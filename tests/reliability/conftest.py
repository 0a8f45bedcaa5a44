"""The reliability suite: real scenarios, each with the figure it measured.

Every scenario runs a real supervisor, real runners and, where users have
one, a real nginx, and talks to them over loopback or UNIX sockets only.
Each is bounded to ``SCENARIO_TIMEOUT`` seconds.

A scenario reports through the ``figures`` fixture, one line per criterion:

- ``figures.exact(criterion, measured, ok)`` for what must hold exactly on
  any machine (0 failed requests, 0 zombies, a descriptor set, a mode): the
  test fails when it does not.
- ``figures.timing(criterion, value, limit, unit)`` for a time or a size the
  issue sets on this kind of machine. The machines are shared and noisy, so
  missing the limit is reported (``no`` in the table), and the test fails
  only past ``TIMING_SLACK`` times the limit, which no noise explains.

At the end of a run that recorded figures, the table (scenario, criterion,
measured, pass) is printed after pytest's summary and written to
``SUMMARY.md`` beside this file (or ``$JUGGLER_RELIABILITY_SUMMARY``), which
the README links.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import SupervisorProcess

SCENARIO_TIMEOUT = 30
TIMING_SLACK = 4.0
HERE = Path(__file__).resolve().parent
DEFAULT_SUMMARY = HERE / "SUMMARY.md"


@dataclass(frozen=True)
class Figure:
    scenario: str
    criterion: str
    measured: str
    passed: bool
    exact: bool
    known_shortfall: bool = False


RECORDED: list[Figure] = []


class Figures:
    """What one scenario measured, criterion by criterion."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario

    def exact(
        self,
        criterion: str,
        measured: object,
        ok: bool,
        *,
        known_shortfall: bool = False,
    ) -> None:
        """Record a criterion that must hold exactly; fail the test if not.

        ``known_shortfall``: the criterion is not met for a documented
        reason (a server package's own limit), and ``ok`` says the failures
        are exactly the documented ones. The table says "no (known)"; the
        test fails when anything else fails, or when the shortfall is gone
        (its documentation must then go too).
        """
        figure = Figure(
            self.scenario, criterion, str(measured), ok and not known_shortfall,
            exact=True, known_shortfall=known_shortfall,
        )  # fmt: skip
        self._add(figure)
        assert ok, f"{self.scenario}: {criterion}: measured {measured}"

    def timing(
        self, criterion: str, value: float, limit: float, unit: str = "ms"
    ) -> None:
        """Record ``value`` against ``limit``; fail only past the slack."""
        self._record(criterion, f"{value:,.1f} {unit}", value <= limit, exact=False)
        assert value <= limit * TIMING_SLACK, (
            f"{self.scenario}: {criterion}: {value:.1f} {unit} is over "
            f"{TIMING_SLACK:g} times the limit of {limit:g} {unit}"
        )

    def note(self, criterion: str, measured: str) -> None:
        """A figure reported for information, with no criterion to meet."""
        self._record(criterion, measured, True, exact=False)

    def _record(self, criterion: str, measured: str, ok: bool, *, exact: bool) -> None:
        self._add(Figure(self.scenario, criterion, measured, ok, exact))

    def _add(self, figure: Figure) -> None:
        RECORDED.append(figure)
        # Printed as it is measured too: visible with -s, and in the
        # captured output of a failed test.
        print(f"figure: {figure.scenario}: {figure.criterion}: {figure.measured}")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.node.name.removeprefix("test_"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Bound every scenario of this folder, whatever its module says."""
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.timeout(SCENARIO_TIMEOUT))


def render(figures: list[Figure]) -> str:
    lines = [
        "| scenario | criterion | measured | pass |",
        "|---|---|---|---|",
    ]
    for figure in figures:
        verdict = "yes" if figure.passed else "no"
        if figure.known_shortfall:
            verdict = "no (known shortfall, documented)"
        elif not figure.exact and not figure.passed:
            verdict = f"no (timing; fails past {TIMING_SLACK:g}x)"
        lines.append(
            f"| {figure.scenario} | {figure.criterion} | {figure.measured} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def _header() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=False,
            timeout=5,
        ).stdout.strip()
    except OSError:
        commit = ""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    return (
        "# Reliability suite: what it measured\n\n"
        f"Run {now} on {platform.node()} ({os.cpu_count()} cores, load "
        f"average {load:.2f} at the end), commit {commit or 'unknown'}. "
        "Regenerated by every run of `tests/reliability/` "
        "(`make test` runs it). Exact criteria fail the run when missed; "
        f"timing criteria are reported, and fail the run only past "
        f"{TIMING_SLACK:g} times their limit (the machines are shared).\n"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RECORDED:
        return
    table = render(RECORDED)
    terminalreporter.section("reliability figures")
    terminalreporter.write_line(table)
    path = Path(os.environ.get("JUGGLER_RELIABILITY_SUMMARY", DEFAULT_SUMMARY))
    path.write_text(f"{_header()}\n{table}\n")
    terminalreporter.write_line(f"written to {path}")


Started = Callable[..., SupervisorProcess]


@pytest.fixture
def juggler(cleanup: list[object]) -> Started:
    """``juggler(config, wait="started:", env=..., extra_args=...)`` starts a
    real supervisor (``wait``: the log line to wait for, None for none),
    stopped at teardown."""

    def start(
        config: str, wait: str | None = "started:", **kwargs: object
    ) -> SupervisorProcess:
        sup = SupervisorProcess(config, **kwargs)  # type: ignore[arg-type]
        cleanup.append(sup)
        sup.start(wait=wait)
        return sup

    return start


@pytest.fixture
def cleanup() -> Iterator[list[object]]:
    """Things with a ``stop()`` to call at teardown, last first."""
    things: list[object] = []
    yield things
    for thing in reversed(things):
        thing.stop()  # type: ignore[attr-defined]
