"""The ground floor of a watcher: its state, and one process spawned or
stopped.

A watcher is built in layers, one role per module, each on the one below::

    watcher_base.py  state; spawn one process, stop one (or all)
    readiness.py     wait until a process is up; rolling replacement; max_age
    spares.py        booted spares that take a dead worker's place at once
    respawn.py       deaths: respawn, back-off, flapping, the desired count
    watcher.py       the operator's commands and the state machine: Watcher

A layer calls the ones below it freely; it reaches a higher one only through
the abstract methods declared here, each naming the layer that keeps it.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
import os
import signal
import time
from collections.abc import Callable

from juggler.supervisor import lifeline
from juggler.supervisor import process as proc
from juggler.supervisor.background import Background
from juggler.supervisor.config_model import WatcherConfig
from juggler.supervisor.errors import SpawnError
from juggler.supervisor.events import EventBus
from juggler.supervisor.flapping import Backoff, FlappingDetector
from juggler.supervisor.hooks import HookVeto
from juggler.supervisor.launch import Launcher, launcher_of
from juggler.supervisor.process import Process, SpawnSpec

log = logging.getLogger("juggler.supervisor")


class WatcherState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FLAPPING = "flapping"


class RestartFailed(Exception):
    """A new process did not become ready; the old ones keep serving."""


class WatcherBase(abc.ABC):
    """A command's processes, and the state they are kept in."""

    def __init__(
        self,
        config: WatcherConfig,
        spawn_spec: Callable[[int], SpawnSpec],
        runtime_dir: str,
        events: EventBus,
    ) -> None:
        self.config = config
        self.name = config.name
        self.numprocesses = config.numprocesses
        self.state = WatcherState.STOPPED
        self.processes: dict[int, Process] = {}
        self.restarts = 0
        self._spawn_spec = spawn_spec
        # hooks/streams: the launcher (launch.py) brings the watcher's hooks
        # and output streams; a plain function brings none.
        self._launcher = launcher_of(spawn_spec, config.name)
        self._hooks = self._launcher.hooks
        self._retired: list[Launcher] = []  # replaced by reconfigure
        self._spawning = 0  # spawns reserved by _fill, not yet serving
        self._spare_spawning = 0  # likewise, for spares
        self._runtime_dir = runtime_dir
        self._events = events
        self._flapping = FlappingDetector(config.flapping)
        self._backoff = Backoff()
        self._spawn_failures = 0
        self._lock = asyncio.Lock()
        self._background = Background(config.name)

    # -- what the higher layers keep -----------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the watcher (watcher.py)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop the watcher and close its streams (watcher.py)."""

    @abc.abstractmethod
    def _on_exit(self, process: Process) -> None:
        """A process was reaped (respawn.py)."""

    @abc.abstractmethod
    def _on_spawn_failed(self, wid: int, exc: SpawnError) -> None:
        """A spawn failed before the child ran (respawn.py)."""

    @abc.abstractmethod
    def _after_unexpected_exit(self, process: Process) -> None:
        """Respawn, back off or flap after a death nobody asked (respawn.py)."""

    # -- the processes -------------------------------------------------------

    def _serving(self) -> list[Process]:
        """Processes that serve (or boot to serve), spares excluded."""
        return [
            p
            for p in self.processes.values()
            if p.alive and not p.stopping and not p.spare
        ]

    def _spares(self) -> list[Process]:
        return [p for p in self.processes.values() if p.alive and p.spare]

    def _free_wid(self) -> int:
        used = {p.wid for p in self.processes.values()}
        return next(wid for wid in range(1, len(used) + 2) if wid not in used)

    async def _spawn(
        self, *, on_trial: bool = False, spare: bool = False
    ) -> Process | None:
        """Spawn one process; None if it failed (a retry is scheduled).

        A process ``on_trial`` is a replacement that must prove itself ready
        before it counts: its death is the failure of a restart, not a crash
        of the watcher. Raises ``HookVeto`` if before_spawn or after_spawn
        vetoed it.
        """
        await self._hooks.check("before_spawn", self)  # hooks
        wid = self._free_wid()
        notify_dir = None
        if self.config.ready == "notify":
            notify_dir = os.path.join(
                self._runtime_dir, f"{self.name}.{wid}.{time.monotonic_ns()}"
            )
        try:
            process = proc.spawn(
                self.name, wid, self._spawn_spec(wid), notify_dir, standby=spare
            )
        except SpawnError as exc:
            self._on_spawn_failed(wid, exc)
            return None
        self._spawn_failures = 0
        process.on_trial = on_trial
        self.processes[process.pid] = process
        # If the arbiter dies, the lifeline stops the group as a stop would.
        lifeline.watch(
            process.pid, self.config.stop_signal, self.config.graceful_timeout
        )
        process.exited.add_done_callback(lambda _: lifeline.forget(process.pid))
        process.exited.add_done_callback(lambda _: self._on_exit(process))
        log.info("spawned: %r%s", process, " (spare)" if spare else "")
        self._events.emit("spawn", watcher=self.name, wid=wid, pid=process.pid)
        # hooks: after_spawn may veto: the new process is stopped.
        if not await self._hooks.call("after_spawn", self, wid=wid, pid=process.pid):
            await self._stop_process(process)
            raise HookVeto(f"{self.name}: hook after_spawn vetoed {process!r}")
        return process

    async def _stop_process(self, process: Process) -> None:
        """Stop one process: stop_signal, then SIGKILL after the timeout."""
        if not process.alive:
            return
        process.stopping = True
        timeout = self.config.graceful_timeout
        log.info(
            "stopping: %r with %s, graceful_timeout=%gs",
            process,
            signal.Signals(self.config.stop_signal).name,
            timeout,
        )
        # hooks: before_signal may keep the stop signal (not SIGKILL) back.
        signum = self.config.stop_signal
        if await self._hooks.call(
            "before_signal", self, pid=process.pid, signum=signum
        ):
            process.send_signal(signum, group=self.config.stop_children)
            self._hooks.call_soon("after_signal", self, pid=process.pid, signum=signum)
        try:
            await asyncio.wait_for(asyncio.shield(process.exited), timeout)
        except TimeoutError:
            log.error("killed: %r after graceful_timeout=%gs", process, timeout)
            process.send_signal(signal.SIGKILL, group=True)
            await process.exited

    async def _stop(self) -> None:
        """Stop every process; the caller holds the lock."""
        self._background.cancel_timers()
        if self.state == WatcherState.STOPPED and not self.processes:
            return
        self._set_state(WatcherState.STOPPING)
        await self._hooks.call("before_stop", self)  # hooks: result ignored
        await asyncio.gather(
            *(self._stop_process(p) for p in list(self.processes.values()))
        )
        self._set_state(WatcherState.STOPPED)
        await self._hooks.call("after_stop", self)  # hooks: result ignored

    # -- state ---------------------------------------------------------------

    def _set_state(self, state: WatcherState) -> None:
        if state != self.state:
            log.debug("state: %s %s -> %s", self.name, self.state, state)
            self.state = state
            self._events.emit("state", watcher=self.name, state=str(state))

    def status(self) -> dict[str, object]:
        """A snapshot for ``juggler status``."""
        return {
            "name": self.name,
            "state": str(self.state),
            "numprocesses": self.numprocesses,
            "restarts": self.restarts,
            "processes": [
                {
                    "wid": p.wid,
                    "pid": p.pid,
                    "age": round(p.age(), 3),
                    "ready": p.ready_at is not None,
                    "spare": p.spare,
                    # Told to stop: it drains and accepts no new connection.
                    "stopping": p.stopping,
                }
                for p in sorted(self.processes.values(), key=lambda p: p.wid)
            ],
        }
