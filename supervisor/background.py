"""A watcher's timers and background tasks.

A watcher reacts to deaths from pidfd callbacks, which cannot await; what
it decides there (respawn in 0.4 s, recycle at max_age, retry after
retry_in) runs later, as a timer or a task kept here. Keeping them lets a
stop cancel the timers, and a task that fails is logged naming the watcher
instead of vanishing with an asyncio warning at exit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("juggler.supervisor")


class Background:
    """The pending timers and running tasks of one watcher."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def later(self, delay: float, callback: Callable[[], object]) -> None:
        """Call ``callback`` in ``delay`` seconds, unless cancelled first."""
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            callback()

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def cancel_timers(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    def run(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run ``coro`` as a task; its failure is logged, not lost."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: background step failed", self.owner, exc_info=task.exception()
            )
