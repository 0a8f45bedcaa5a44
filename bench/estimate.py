"""How long a profile takes: its runs counted, times what each costs.

The costs are what a run of the quick profile took on the 2-core machine
of shared/PEERS.md (shared with other work at the time), rounded up: the
start and stop of a configuration and nginx around its wrk runs, a kill
per supervisor (circus waits for its 5 s poll), and the spawn of one
process. ``python -m bench`` prints the estimate before it starts, so that
a ``--full`` run can be planned for one sitting; the report puts it next
to the wall time the run took.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench import management, reload, runs
from bench.profiles import Profile

# Starting a configuration and its nginx, and stopping both (meinheld's
# drain and gunicorn's gevent worker take the longest).
CELL_S = 1.0
# wrk's own start and summary around the seconds it is told to run.
WRK_EXTRA_S = 0.2
# chaussette 1.3 serves these; for the others its row fails at once.
CHAUSSETTE_BACKENDS = ("wsgiref", "meinheld", "waitress")
FAILED_CELL_S = 0.2
KILL_S = {"juggler": 0.5, "gunicorn": 0.7, "circus": 5.2}
# Spawning and then stopping one process, per supervisor.
PROCESS_S = {"juggler": 0.012, "gunicorn": 0.06, "circus": 0.008}
# pytest's start, and the 100-watcher parse (the slowest micro-benchmark).
MICRO_START_S = 3.0
MICRO_BENCHMARKS = 8
CONFIG_PARSE_S = 0.16


@dataclass(frozen=True)
class Estimate:
    """What a profile will run, and about how long it will take."""

    throughput_runs: int
    cells: int
    kills: int
    reload_rows: int
    spawn_rows: int
    seconds: float

    def describe(self, profile: Profile) -> str:
        return (
            f"profile {profile.name}: {profile.rounds} round(s) of "
            f"{self.cells // max(1, profile.rounds)} configurations "
            f"({self.throughput_runs} wrk runs of {profile.duration:g} s), "
            f"{self.kills} kills, {self.reload_rows} reload rows, "
            f"{self.spawn_rows} spawn/idle rows and the micro-benchmarks: "
            f"about {self.seconds / 60:.0f} min"
        )


def estimate(profile: Profile, parts: frozenset[str] = frozenset()) -> Estimate:
    """The estimate of a profile, without the ``parts`` that are skipped."""
    cells = runs.plan(profile) if "throughput" not in parts else []
    restarts = management.restart_plan(profile) if "restart" not in parts else []
    reloads = len(profile.reload_backends) * len(reload.SUPERVISORS)
    reloads = 0 if "reload" in parts else reloads
    spawns = [] if "spawn" in parts else _spawn_rows(profile)
    seconds = profile.rounds * sum(_cell_seconds(c, profile) for c in cells)
    seconds += sum(CELL_S + KILL_S[config] * profile.kills for config, _ in restarts)
    seconds += reloads * (CELL_S + profile.warmup + 2 * profile.reload_duration)
    seconds += sum(_spawn_seconds(config, n, profile) for config, n in spawns)
    seconds += 0.0 if "micro" in parts else _micro_seconds(profile)
    return Estimate(
        throughput_runs=profile.rounds * sum(len(c.workloads) for c in cells),
        cells=profile.rounds * len(cells),
        kills=len(restarts) * profile.kills,
        reload_rows=reloads,
        spawn_rows=len(spawns),
        seconds=seconds,
    )


def _cell_seconds(cell: runs.Cell, profile: Profile) -> float:
    if cell.config == "circus" and cell.backend not in CHAUSSETTE_BACKENDS:
        return FAILED_CELL_S
    warmups = profile.warmup + runs.warmup_next(profile) * (len(cell.workloads) - 1)
    measured = (profile.duration + 2 * WRK_EXTRA_S) * len(cell.workloads)
    return CELL_S + warmups + measured


def _spawn_rows(profile: Profile) -> list[tuple[str, int]]:
    return [
        (config, count)
        for count in profile.idle_counts
        for config in management.SUPERVISORS
        if management.too_big(config, count) is None
    ]


def _spawn_seconds(config: str, count: int, profile: Profile) -> float:
    return CELL_S + profile.idle_window + PROCESS_S[config] * count


def _micro_seconds(profile: Profile) -> float:
    timed = MICRO_BENCHMARKS * (profile.micro_max_time + 0.05)
    return MICRO_START_S + timed + profile.micro_min_rounds * CONFIG_PARSE_S
