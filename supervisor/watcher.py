"""A watcher: a named command, the N processes that run it, and its states.

States::

    stopped --start--> starting --all ready--> running --stop--> stopping
       ^                                         |  ^                 |
       |                      processes die fast |  | retry_in passed |
       |                                         v  |                 |
       +---------------- gave up ------------- flapping               |
       +--------------------------------------------------------------+

While *running*, the watcher keeps ``numprocesses`` processes alive and
respawns those that die (respawn.py); every step that waits for a new
process waits until it is ready (readiness.py); spares stand by to take a
dead worker's place (spares.py). This module holds the operator's commands
and the moves between states; watcher_base.py lists the layers a
``Watcher`` is built of.

Operator commands on one watcher are serialised by its own lock; different
watchers never wait for each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from juggler.supervisor.config_model import WatcherConfig
from juggler.supervisor.hooks import HookVeto
from juggler.supervisor.launch import launcher_of
from juggler.supervisor.process import SpawnSpec
from juggler.supervisor.respawn import RespawningWatcher
from juggler.supervisor.watcher_base import RestartFailed, WatcherState

__all__ = ["RestartFailed", "Watcher", "WatcherState"]

log = logging.getLogger("juggler.supervisor")


class Watcher(RespawningWatcher):
    """Keeps a command's processes alive, and changes them when asked."""

    # -- operator commands -------------------------------------------------

    async def start(self) -> None:
        """Spawn the processes and wait until they are ready."""
        async with self._lock:
            await self._start()

    @property
    def start_problem(self) -> str | None:
        """Why this watcher refuses to start (a hook or stream that failed
        to load), if that is the reason."""
        return self._hooks.problem

    async def stop(self) -> None:
        """Stop every process gracefully, SIGKILL after graceful_timeout."""
        async with self._lock:
            await self._stop()
            # streams: closed with the watcher; reopened by the next output.
            for launcher in (*self._retired, self._launcher):
                await launcher.close_streams()
            self._retired.clear()

    async def restart(self, *, rolling: bool = True) -> None:
        """Replace every process; rolling: each new one ready first."""
        async with self._lock:
            if not rolling or self.state != WatcherState.RUNNING:
                await self._stop()
                await self._start()
                return
            # Spares run the old code: they go first, and come back after.
            await asyncio.gather(*(self._stop_process(p) for p in self._spares()))
            for old in sorted(self._serving(), key=lambda p: p.wid):
                await self._replace(old)
            self._reconcile()

    async def set_numprocesses(self, count: int) -> None:
        """Change the number of processes; new ones are ready on return."""
        async with self._lock:
            self.numprocesses = max(0, count)
            if self.state != WatcherState.RUNNING:
                return
            extra = sorted(self._serving(), key=lambda p: p.wid)[self.numprocesses :]
            await asyncio.gather(*(self._stop_process(p) for p in extra))
            try:
                await self._wait_all_ready(await self._fill())
            except HookVeto:  # hooks: a spawn veto stops the watcher
                await self._stop()

    async def reconfigure(
        self, config: WatcherConfig, spawn_spec: Callable[[int], SpawnSpec]
    ) -> None:
        """Take new options: they apply to processes spawned from now on,
        except ``numprocesses``, which is applied at once."""
        async with self._lock:
            self.config = config
            self._spawn_spec = spawn_spec
            # hooks/streams: running processes keep writing to the old
            # streams until they exit; stop() closes those too.
            self._retired.append(self._launcher)
            self._launcher = launcher_of(spawn_spec, config.name)
            self._hooks = self._launcher.hooks
            self._flapping.policy = config.flapping
        if config.numprocesses != self.numprocesses:
            await self.set_numprocesses(config.numprocesses)

    def signal(self, signum: int, *, children: bool = False) -> int:
        """Send a signal to every process; return how many got it."""
        return sum(p.send_signal(signum, group=children) for p in self._serving())

    # -- starting ------------------------------------------------------------

    async def _start(self) -> None:
        if self.state == WatcherState.RUNNING:
            return
        # hooks: a watcher whose hook or stream failed to load never starts.
        if self._hooks.problem is not None:
            log.error("not starting: %s", self._hooks.problem)
            return
        self._background.cancel_timers()
        if not await self._hooks.call("before_start", self):  # hooks
            self._set_state(WatcherState.STOPPED)
            return
        self._set_state(WatcherState.STARTING)
        try:
            started = await self._fill()
        except HookVeto:  # hooks: a spawn veto aborts the start
            await self._stop()
            return
        await self._wait_all_ready(started)
        # hooks: after_start may veto: the watcher is stopped again.
        if self.state == WatcherState.STARTING and not await self._hooks.call(
            "after_start", self
        ):
            await self._stop()
            return
        if self.state == WatcherState.STARTING:
            self._set_state(WatcherState.RUNNING)
            self._background.run(self._top_up_spares())
