"""Spare processes: booted, waiting, promoted the moment a worker is missing.

With ``spare_processes = N`` a running watcher keeps N extra processes
booted past their readiness but not serving: each waits on a standby pipe
(runner/standby.py). When a serving process dies, or an incr asks for one
more, a ready spare is told to serve by one byte on that pipe -- a few
milliseconds instead of a fresh boot -- and a new spare boots in the
background.

A spare never served, so its death is no crash of the watcher and never
makes it flap. One that could not boot is retried after ``retry_in``; one
that was ready (and then killed) is replaced at once. Spares run the code
they booted with: a rolling restart stops them first and boots new ones
after.
"""

from __future__ import annotations

import logging

from juggler.supervisor.hooks import HookVeto
from juggler.supervisor.process import Process
from juggler.supervisor.readiness import ReadyWatcher
from juggler.supervisor.watcher_base import WatcherState

log = logging.getLogger("juggler.supervisor")


class SpareWatcher(ReadyWatcher):
    """A watcher that keeps ``spare_processes`` booted spares."""

    def _promote_spares(self, wanted: int) -> int:
        """Put up to ``wanted`` booted spares to work; return how many."""
        promoted = 0
        for spare in sorted(self._spares(), key=lambda p: p.started_at):
            if promoted >= wanted:
                break
            if spare.ready_at is None or not spare.promote():
                continue
            promoted += 1
            log.info("promoted: %r from spare to serving", spare)
            self._events.emit(
                "promote", watcher=self.name, wid=spare.wid, pid=spare.pid
            )
            self._schedule_recycling(spare)
        return promoted

    async def _top_up_spares(self) -> None:
        """Boot spares until ``spare_processes`` wait, once running."""
        if self.state != WatcherState.RUNNING:
            return
        wanted = self.config.spare_processes - len(self._spares())
        wanted -= self._spare_spawning
        self._spare_spawning += max(0, wanted)
        try:
            for _ in range(wanted):
                spare = await self._spawn(spare=True)
                self._spare_spawning -= 1
                wanted -= 1
                if spare is not None:
                    self._background.run(self._watch_readiness(spare))
        except HookVeto:
            log.warning("%s: a hook vetoed a spare; running without one", self.name)
        finally:
            self._spare_spawning -= max(0, wanted)

    def _after_spare_exit(self, process: Process, how: str) -> None:
        """A spare died: replace it, at once or after retry_in."""
        if self.state != WatcherState.RUNNING:
            return
        if process.ready_at is not None:
            log.warning("exited: %r %s (spare; replacing it)", process, how)
            self._background.run(self._top_up_spares())
            return
        retry_in = self.config.flapping.retry_in
        log.warning(
            "exited: %r %s (spare failed to boot; next one in %gs)",
            process,
            how,
            retry_in,
        )
        self._background.later(
            retry_in, lambda: self._background.run(self._top_up_spares())
        )
