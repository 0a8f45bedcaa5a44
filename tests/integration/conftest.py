"""Fixtures shared by the control-channel tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from harness import SupervisorProcess


@pytest.fixture
def juggler() -> Iterator[Callable[..., SupervisorProcess]]:
    """``juggler(config, **kwargs)`` starts a supervisor, stopped at teardown."""
    started: list[SupervisorProcess] = []

    def start(config: str, **kwargs: object) -> SupervisorProcess:
        sup = SupervisorProcess(config, **kwargs)  # type: ignore[arg-type]
        started.append(sup)
        sup.start()
        return sup

    yield start
    for sup in started:
        sup.stop()
