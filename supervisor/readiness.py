"""When a new process counts as up, and the steps that wait for it.

A process is *ready* when it sent READY=1 on its notify socket (``ready =
notify``), or survived ``warmup_delay`` (``ready = warmup``), or at once
(``ready = none``). Every step that puts a new process in an old one's
place waits for that: a rolling restart and max_age recycling replace one
process at a time (``_replace``), the new one ready before the old one is
told to stop. A replacement that never becomes ready is stopped and the old
process keeps serving; the step reports ``RestartFailed``.

A process that is not ready within ``ready_timeout`` outside a replacement
(at start, a respawn, an incr) is stopped, and counts as a death nobody
asked for (respawn.py decides what follows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from juggler.supervisor.hooks import HookVeto
from juggler.supervisor.process import (
    HOPELESS_EXIT_CODES,
    Process,
    exit_description,
)
from juggler.supervisor.watcher_base import RestartFailed, WatcherBase, WatcherState

log = logging.getLogger("juggler.supervisor")


class ReadyWatcher(WatcherBase):
    """A watcher that knows when its processes are up."""

    async def _wait_ready(self, process: Process) -> bool:
        """Wait until ``process`` is up as the ``ready`` option says."""
        mode, timeout = self.config.ready, self.config.ready_timeout
        if mode == "notify" and process.notify is not None:
            waited = {process.notify.ready, process.exited}
            done, _ = await asyncio.wait(
                waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            ok = process.notify.ready in done and process.alive
        elif mode == "warmup":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(process.exited), self.config.warmup_delay
                )
            ok = process.alive
        else:
            ok = process.alive
        if ok:
            self._on_ready(process)
        elif process.alive and not process.stopping:
            log.error(
                "not ready: %r after ready_timeout=%gs; stopping it", process, timeout
            )
        return ok

    async def _wait_all_ready(self, processes: list[Process]) -> None:
        await asyncio.gather(*(self._watch_readiness(p) for p in processes))

    async def _watch_readiness(self, process: Process) -> None:
        """Wait for ``process`` to be ready; a laggard is stopped and counts
        as a death nobody asked for."""
        if await self._wait_ready(process) or not process.alive:
            return
        await self._stop_process(process)
        # While starting too: else a watcher whose first processes all lag
        # would be "running" with none.
        active = (WatcherState.RUNNING, WatcherState.STARTING)
        if self.state in active and self.config.respawn:
            self._after_unexpected_exit(process)

    def _on_ready(self, process: Process) -> None:
        process.ready_at = time.monotonic()
        log.info(
            "ready: %r after %.3fs%s",
            process,
            process.ready_at - process.started_at,
            " (spare, waiting)" if process.spare else "",
        )
        self._events.emit("ready", watcher=self.name, wid=process.wid, pid=process.pid)
        # The streak of fast deaths ends once a process outlives
        # FAST_DEATH_SECONDS, of young deaths once a ready one outlives window.
        self._background.later(
            self._backoff.survival_wait(process.age()),
            lambda: self._end_fast_streak(process),
        )
        self._background.later(
            self.config.flapping.window,
            lambda: self._end_young_streak(process),
        )
        if not process.spare:  # a spare's age counts from its promotion
            self._schedule_recycling(process)

    def _end_fast_streak(self, process: Process) -> None:
        if process.alive:
            self._backoff.record_survivor()

    def _end_young_streak(self, process: Process) -> None:
        if process.alive:
            self._flapping.record_healthy()

    # -- replacing a process -------------------------------------------------

    async def _replace(self, old: Process) -> None:
        """Start a successor for ``old``; stop ``old`` once it is ready."""
        try:
            new = await self._spawn(on_trial=True)
        except HookVeto as exc:  # hooks
            raise RestartFailed(f"{exc}; {old!r} keeps serving") from None
        if new is None or not await self._wait_ready(new):
            cause = self._trial_failure(new)
            if new is not None:
                await self._stop_process(new)
            raise RestartFailed(
                f"{self.name}: a new process did not become ready: {cause}; "
                f"{old!r} keeps serving"
            )
        new.on_trial = False
        await self._stop_process(old)

    def _trial_failure(self, new: Process | None) -> str:
        """Why a replacement failed, for the one line the operator reads."""
        if new is None:
            return "it could not be spawned (see the log)"
        if new.exit_status is None:
            return (
                f"{new!r} not ready within ready_timeout={self.config.ready_timeout:g}s"
            )
        how = exit_description(new.exit_status)
        meaning = HOPELESS_EXIT_CODES.get(new.exit_code() or 0)
        return f"{new!r} exited with {how}" + (f" ({meaning})" if meaning else "")

    def _schedule_recycling(self, process: Process) -> None:
        """Recycle ``process`` after max_age (plus variance), if set."""
        if self.config.max_age > 0:
            age = self.config.max_age + random.uniform(0, self.config.max_age_variance)
            self._background.later(
                age, lambda: self._background.run(self._recycle(process))
            )

    async def _recycle(self, process: Process) -> None:
        if not process.alive or process.stopping or self.state != WatcherState.RUNNING:
            return
        log.info("recycling: %r after max_age=%gs", process, self.config.max_age)
        async with self._lock:
            try:
                await self._replace(process)
            except RestartFailed as exc:
                log.error("recycling failed: %s", exc)
