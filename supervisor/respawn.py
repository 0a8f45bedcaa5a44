"""Deaths and what follows them: respawn, back-off, flapping.

While a watcher runs it keeps ``numprocesses`` processes (``_fill``): a
process that dies unexpectedly is respawned at once -- a ready spare takes
its place if there is one -- and consecutive fast deaths back off, up to
``BACKOFF_MAX`` between spawns (flapping.py). The flapping policy (flapping.py) stops a
watcher whose processes keep dying young, retries after ``retry_in`` and
gives up after ``max_retry``. A stop the operator asked for never counts.

With ``respawn = false`` nothing is respawned, and a watcher whose last
process is gone is stopped, as in Circus, so that ``start`` brings it back.

A process that exits with the runner's "cannot boot" (3) or "app failed to
load" (4) codes would fail the same way again: the watcher rests for
``retry_in`` at once, as if flapping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from juggler.supervisor.errors import SpawnError
from juggler.supervisor.flapping import backoff_delay
from juggler.supervisor.hooks import HookVeto
from juggler.supervisor.process import (
    HOPELESS_EXIT_CODES,
    Process,
    exit_description,
)
from juggler.supervisor.spares import SpareWatcher
from juggler.supervisor.watcher_base import WatcherState

log = logging.getLogger("juggler.supervisor")


class RespawningWatcher(SpareWatcher):
    """A watcher that keeps its count of processes through their deaths."""

    def _on_exit(self, process: Process) -> None:
        self.processes.pop(process.pid, None)
        assert process.exit_status is not None
        how = exit_description(process.exit_status)
        self._events.emit(
            "exit",
            watcher=self.name,
            wid=process.wid,
            pid=process.pid,
            how=how,
            expected=process.stopping,
        )
        # hooks: the reap hooks run in the background; nothing waits for them.
        self._hooks.reaped(self, process.pid, process.exit_status, process.stopping)
        if process.stopping:
            log.info("exited: %r %s (stopped)", process, how)
            return
        if process.spare:
            self._after_spare_exit(process, how)
            return
        if process.on_trial:
            # The restart that spawned it reports the failure; the processes
            # it was to replace keep serving.
            log.warning("exited: %r %s (replacement failed)", process, how)
            return
        self._log_unexpected_exit(process, how)
        if self.state not in (WatcherState.RUNNING, WatcherState.STARTING):
            return
        if not self.config.respawn:
            self._background.run(self._stop_when_none_left())
            return
        self._after_unexpected_exit(process)

    async def _stop_when_none_left(self) -> None:
        """respawn = false: once its last process is gone the watcher is
        stopped, as in Circus, so that ``start`` spawns its processes again
        (a start leaves a running watcher alone, even one with none left)."""
        async with self._lock:
            if self._serving() or self._spawning:
                return
            if self.state not in (WatcherState.RUNNING, WatcherState.STARTING):
                return
            log.info("not respawning: %s has no process left; stopping it", self.name)
            await self._stop()

    def _log_unexpected_exit(self, process: Process, how: str) -> None:
        status = process.exit_status
        assert status is not None
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            log.error(
                "exited: %r %s (unexpected; out of memory, or killed by hand?)",
                process,
                how,
            )
        else:
            log.warning("exited: %r %s (unexpected)", process, how)

    def _after_unexpected_exit(self, process: Process) -> None:
        self.restarts += 1
        hopeless = HOPELESS_EXIT_CODES.get(process.exit_code() or 0)
        if hopeless:
            # Respawning now would fail the same way: rest like a flapping
            # watcher, whatever the count of deaths.
            self._flapping.record_episode()
            self._enter_flapping(f"exited with {hopeless}")
            return
        young = self._died_young(process)
        if self._flapping.record_death(young=young):
            policy = self.config.flapping
            self._enter_flapping(f"{policy.attempts} processes died young in a row")
            return
        delay = self._backoff.record_death(process.age())
        if delay:
            log.info(
                "respawn: %s in %.1fs after %d fast deaths",
                self.name,
                delay,
                self._backoff.fast_deaths,
            )
            self._background.later(delay, self._reconcile)
        else:
            self._reconcile()

    def _died_young(self, process: Process) -> bool:
        """Before it was ready; or, when readiness is only a guess (warmup,
        none), within the flapping window of its start."""
        if process.ready_at is None:
            return True
        guessed = self.config.ready != "notify"
        return guessed and process.age() < self.config.flapping.window

    def _on_spawn_failed(self, wid: int, exc: SpawnError) -> None:
        """Retry with back-off; give up after ``max_retry`` failures in a row."""
        self._spawn_failures += 1
        self._events.emit("spawn_failed", watcher=self.name, wid=wid, error=str(exc))
        limit = self.config.max_retry
        if 0 <= limit < self._spawn_failures:
            log.error("spawn failed: %s; gave up after max_retry=%d", exc, limit)
            self._background.run(self.stop())
            return
        delay = backoff_delay(self._spawn_failures)
        log.error("spawn failed: %s; retrying in %.1fs", exc, delay)
        self._background.later(delay, self._reconcile)

    # -- flapping ------------------------------------------------------------

    def _enter_flapping(self, reason: str) -> None:
        """Stop the watcher; start it again after retry_in unless it gave up."""
        # Set at once, so that the deaths of its other processes, reported
        # before the stop below has run, do not start a second episode.
        self._set_state(WatcherState.FLAPPING)
        policy = self.config.flapping
        gave_up = self._flapping.gave_up()
        if gave_up:
            log.error(
                "flapping: %s %s; gave up after max_retry=%d, stopping it",
                self.name,
                reason,
                policy.max_retry,
            )
        else:
            log.error(
                "flapping: %s %s; retrying in %gs", self.name, reason, policy.retry_in
            )
        self._events.emit("flapping", watcher=self.name, gave_up=gave_up)
        self._background.run(self._stop_flapping(retry=not gave_up))

    async def _stop_flapping(self, *, retry: bool) -> None:
        async with self._lock:
            await self._stop()
            if retry:
                self._set_state(WatcherState.FLAPPING)
                self._background.later(
                    self.config.flapping.retry_in,
                    lambda: self._background.run(self.start()),
                )

    # -- the desired count ---------------------------------------------------

    def _reconcile(self) -> None:
        """Spawn what is missing to reach numprocesses, in the background."""
        if self.state in (WatcherState.RUNNING, WatcherState.STARTING):
            self._background.run(self._refill())

    async def _refill(self) -> None:
        try:
            new = await self._fill()
        except HookVeto:  # hooks: a spawn veto stops the watcher
            await self.stop()
            return
        await self._wait_all_ready(new)

    async def _fill(self) -> list[Process]:
        """Spawn what is missing to reach numprocesses; return the new ones.

        The count is reserved first (``_spawning``): while a hook runs,
        another fill must not spawn the same missing processes again.
        """
        if self.state not in (WatcherState.RUNNING, WatcherState.STARTING):
            return []
        missing = self.numprocesses - len(self._serving()) - self._spawning
        reserved = max(0, missing - self._promote_spares(missing))
        self._background.run(self._top_up_spares())
        self._spawning += reserved
        new: list[Process] = []
        try:
            for index in range(reserved):
                if index:
                    await self._pause_between_spawns()
                process = await self._spawn()
                self._spawning -= 1
                reserved -= 1
                if process is not None:  # else a retry is scheduled
                    new.append(process)
        finally:
            self._spawning -= reserved
        return new

    async def _pause_between_spawns(self) -> None:
        """warmup_delay apart, as Circus spaced them; and in any case a turn
        of the loop, so that spawning hundreds of processes never holds up
        the control channel or another watcher."""
        await asyncio.sleep(self.config.warmup_delay)
