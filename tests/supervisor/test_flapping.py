"""Respawn pacing and the flapping policy as units."""

from __future__ import annotations

from juggler.supervisor.config_model import FlappingConfig
from juggler.supervisor.flapping import (
    BACKOFF_MAX,
    FAST_DEATH_SECONDS,
    Backoff,
    FlappingDetector,
)


def test_two_fast_deaths_start_a_back_off_that_doubles_to_the_cap():
    backoff = Backoff()
    delays = [backoff.record_death(0.01) for _ in range(10)]
    assert delays[:5] == [0.0, 0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == BACKOFF_MAX
    assert delays == sorted(delays)


def test_a_death_after_a_long_life_ends_the_streak():
    backoff = Backoff()
    for _ in range(5):
        backoff.record_death(0.01)
    assert backoff.record_death(FAST_DEATH_SECONDS + 1) == 0.0
    assert backoff.record_death(0.01) == 0.0


def test_a_survivor_ends_the_streak_only_once_it_has_lived():
    backoff = Backoff()
    for _ in range(5):
        backoff.record_death(0.01)
    assert Backoff.survival_wait(0.25) == FAST_DEATH_SECONDS - 0.25
    assert Backoff.survival_wait(FAST_DEATH_SECONDS + 3) == 0.0
    backoff.record_survivor()
    assert backoff.record_death(0.01) == 0.0


def test_young_deaths_in_a_row_flap_and_max_retry_gives_up():
    detector = FlappingDetector(FlappingConfig(attempts=2, max_retry=1))
    assert not detector.record_death(young=True)
    assert detector.record_death(young=True)
    assert not detector.gave_up()
    # An old death between two young ones breaks the run.
    assert not detector.record_death(young=True)
    assert not detector.record_death(young=False)
    assert not detector.record_death(young=True)
    assert detector.record_death(young=True)
    assert detector.gave_up()
    detector.record_healthy()
    assert not detector.gave_up()


def test_a_disabled_policy_never_flaps():
    detector = FlappingDetector(FlappingConfig(enabled=False, attempts=1))
    assert not any(detector.record_death(young=True) for _ in range(10))
