"""How a watcher paces its respawns (``Backoff``) and when it stops them
(``FlappingDetector``).

Back-off: a process that lived less than ``FAST_DEATH_SECONDS`` died
*fast*. After two fast deaths in a row the next respawn waits
``BACKOFF_FIRST`` seconds, doubling with each one up to ``BACKOFF_MAX``.
The streak ends when a process dies after living longer, or is still alive
``FAST_DEATH_SECONDS`` after its start. Being ready is not enough: with
``ready = none`` a process is ready the moment it starts, and a command
that exits at once would otherwise be respawned in a tight loop.

The flapping policy stops respawning a watcher whose processes keep dying
young.

Circus shipped this as a plugin with four settings, which juggler keeps
(``FlappingConfig``): ``attempts``, ``window``, ``retry_in``, ``max_retry``.
juggler reads them as follows:

- a process *died young* when it exited unexpectedly before it was ready
  -- or, when readiness is only inferred (``ready = warmup`` or ``none``),
  within ``window`` seconds of its start; a process that announced READY=1
  itself was healthy, however soon it is killed;
- ``attempts`` young deaths in a row make the watcher *flapping*: it is
  stopped, rests ``retry_in`` seconds and is started again;
- after ``max_retry`` flapping episodes in a row it gives up and stays
  stopped (``max_retry = -1``: it never gives up);
- a process that was ready for ``window`` seconds ends the streak.

Circus counted every death within the window, so a few healthy workers
killed in quick succession (by the OOM killer, say) stopped a whole
watcher; counting only young deaths keeps such a watcher serving. A stop,
restart or decrement asked by the operator never counts at all.

Unlike Circus, where the policy only ran when the plugin was configured,
juggler applies it to every watcher unless ``check_flapping = false`` or
``flapping.active = false``.
"""

from __future__ import annotations

from juggler.supervisor.config_model import FlappingConfig

FAST_DEATH_SECONDS = 1.0
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0


def backoff_delay(streak: int) -> float:
    """The wait before attempt ``streak + 1`` of a run of failures."""
    if streak < 1:
        return 0.0
    return float(min(BACKOFF_FIRST * 2 ** (streak - 1), BACKOFF_MAX))


class Backoff:
    """Counts one watcher's fast deaths in a row."""

    def __init__(self) -> None:
        self.fast_deaths = 0

    def record_death(self, lifetime: float) -> float:
        """Count an unexpected death; return how long to wait to respawn."""
        fast = lifetime < FAST_DEATH_SECONDS
        self.fast_deaths = self.fast_deaths + 1 if fast else 0
        return backoff_delay(self.fast_deaths - 1)

    @staticmethod
    def survival_wait(age: float) -> float:
        """How long after now a process of ``age`` seconds has survived."""
        return max(0.0, FAST_DEATH_SECONDS - age)

    def record_survivor(self) -> None:
        """A process lived past FAST_DEATH_SECONDS: the streak is over."""
        self.fast_deaths = 0


class FlappingDetector:
    """Counts the young deaths of one watcher's processes."""

    def __init__(self, policy: FlappingConfig) -> None:
        self.policy = policy
        self._young_deaths = 0
        self.episodes = 0  # flapping episodes in a row

    def record_death(self, *, young: bool) -> bool:
        """Count one unexpected death; True if the watcher is now flapping."""
        if not young:
            self._young_deaths = 0
            return False
        self._young_deaths += 1
        if not self.policy.enabled or self._young_deaths < self.policy.attempts:
            return False
        self._young_deaths = 0
        self.episodes += 1
        return True

    def record_episode(self) -> None:
        """Count an episode without deaths to count: a hopeless exit code."""
        self._young_deaths = 0
        self.episodes += 1

    def gave_up(self) -> bool:
        """Whether the flapping episodes in a row exceeded ``max_retry``."""
        limit = self.policy.max_retry
        return limit >= 0 and self.episodes > limit

    def record_healthy(self) -> None:
        """A process became ready and stayed up: the streak is over."""
        self._young_deaths = 0
        self.episodes = 0
