"""A watcher: a named command, the N processes that run it, and its states.

States::

    stopped --start--> starting --all ready--> running --stop--> stopping
       ^                                         |  ^                 |
       |                      processes die fast |  | retry_in passed |
       |                                         v  |                 |
       +---------------- gave up ------------- flapping               |
       +--------------------------------------------------------------+

While *running*, the watcher keeps ``numprocesses`` processes alive: a
process that dies unexpectedly is respawned at once (consecutive fast
deaths back off), and the flapping policy stops a watcher that keeps dying.
A worker that exits with the runner's "cannot boot" (3) or "app failed to
load" (4) codes would fail the same way again, so it is not respawned until
``retry_in`` has passed.

Every step that waits for a new process (rolling restart, max_age recycling,
incr) waits until it is *ready*: it sent READY=1 on its notify socket
(``ready = notify``), or survived ``warmup_delay`` (``ready = warmup``), or at
once (``ready = none``). A replacement that never becomes ready is stopped
and the old process keeps serving.

Operator commands on one watcher are serialised by its own lock; different
watchers never wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import signal
import time
from collections.abc import Callable

from juggler.supervisor import process as proc
from juggler.supervisor.config_model import WatcherConfig
from juggler.supervisor.errors import SpawnError
from juggler.supervisor.events import EventBus
from juggler.supervisor.flapping import FlappingDetector
from juggler.supervisor.hooks import HookVeto
from juggler.supervisor.launch import Launcher, launcher_of
from juggler.supervisor.process import Process, SpawnSpec, exit_description

log = logging.getLogger("juggler.supervisor")

# Exit codes of the runner that mean "respawning now would fail again".
HOPELESS_EXIT_CODES = {3: "cannot boot", 4: "app failed to load"}
# A process that lived less than this died "fast"; fast deaths back off.
FAST_DEATH_SECONDS = 1.0
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0


class WatcherState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FLAPPING = "flapping"


class RestartFailed(Exception):
    """A new process did not become ready; the old ones keep serving."""


class Watcher:
    """Keeps a command's processes alive, and changes them when asked."""

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
        self._fast_deaths = 0
        self._spawn_failures = 0
        self._lock = asyncio.Lock()
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- operator commands -------------------------------------------------

    async def start(self) -> None:
        """Spawn the processes and wait until they are ready."""
        async with self._lock:
            await self._start()

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

    # -- starting and stopping ----------------------------------------------

    async def _start(self) -> None:
        if self.state == WatcherState.RUNNING:
            return
        # hooks: a watcher whose hook or stream failed to load never starts.
        if self._hooks.problem is not None:
            log.error("not starting: %s", self._hooks.problem)
            return
        self._cancel_timers()
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
            self._spawn_task(self._top_up_spares())

    async def _stop(self) -> None:
        self._cancel_timers()
        if self.state == WatcherState.STOPPED and not self.processes:
            return
        self._set_state(WatcherState.STOPPING)
        await self._hooks.call("before_stop", self)  # hooks: result ignored
        await asyncio.gather(
            *(self._stop_process(p) for p in list(self.processes.values()))
        )
        self._set_state(WatcherState.STOPPED)
        await self._hooks.call("after_stop", self)  # hooks: result ignored

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

    async def _replace(self, old: Process) -> None:
        """Start a successor for ``old``; stop ``old`` once it is ready."""
        try:
            new = await self._spawn(on_trial=True)
        except HookVeto as exc:  # hooks
            raise RestartFailed(f"{exc}; {old!r} keeps serving") from None
        if new is None or not await self._wait_ready(new):
            if new is not None:
                await self._stop_process(new)
            raise RestartFailed(
                f"{self.name}: a new process did not become ready; "
                f"{old!r} keeps serving"
            )
        new.on_trial = False
        await self._stop_process(old)

    # -- processes -----------------------------------------------------------

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
        notify_path = None
        if self.config.ready == "notify":
            notify_path = os.path.join(
                self._runtime_dir, f"{self.name}.{wid}.{time.monotonic_ns()}"
            )
        try:
            process = proc.spawn(
                self.name, wid, self._spawn_spec(wid), notify_path, standby=spare
            )
        except SpawnError as exc:
            self._on_spawn_failed(wid, exc)
            return None
        self._spawn_failures = 0
        process.on_trial = on_trial
        self.processes[process.pid] = process
        process.exited.add_done_callback(lambda _: self._on_exit(process))
        log.info("spawned: %r%s", process, " (spare)" if spare else "")
        self._events.emit("spawn", watcher=self.name, wid=wid, pid=process.pid)
        # hooks: after_spawn may veto: the new process is stopped.
        if not await self._hooks.call("after_spawn", self, wid=wid, pid=process.pid):
            await self._stop_process(process)
            raise HookVeto(f"{self.name}: hook after_spawn vetoed {process!r}")
        return process

    def _on_spawn_failed(self, wid: int, exc: SpawnError) -> None:
        """Retry with back-off; give up after ``max_retry`` failures in a row."""
        self._spawn_failures += 1
        self._events.emit("spawn_failed", watcher=self.name, wid=wid, error=str(exc))
        limit = self.config.max_retry
        if 0 <= limit < self._spawn_failures:
            log.error("spawn failed: %s; gave up after max_retry=%d", exc, limit)
            self._spawn_task(self.stop())
            return
        delay = min(BACKOFF_FIRST * 2 ** (self._spawn_failures - 1), BACKOFF_MAX)
        log.error("spawn failed: %s; retrying in %.1fs", exc, delay)
        self._schedule(delay, self._reconcile)

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

    def _on_ready(self, process: Process) -> None:
        process.ready_at = time.monotonic()
        log.info(
            "ready: %r after %.3fs%s",
            process,
            process.ready_at - process.started_at,
            " (spare, waiting)" if process.spare else "",
        )
        self._events.emit("ready", watcher=self.name, wid=process.wid, pid=process.pid)
        self._fast_deaths = 0
        # The streak of young deaths ends once a ready process outlives window.
        self._schedule(
            self.config.flapping.window,
            lambda: self._end_young_streak(process),
        )
        if not process.spare:  # a spare's age counts from its promotion
            self._schedule_recycling(process)

    def _schedule_recycling(self, process: Process) -> None:
        """Recycle ``process`` after max_age (plus variance), if set."""
        if self.config.max_age > 0:
            age = self.config.max_age + random.uniform(0, self.config.max_age_variance)
            self._schedule(age, lambda: self._spawn_task(self._recycle(process)))

    def _end_young_streak(self, process: Process) -> None:
        if process.alive:
            self._flapping.record_healthy()

    async def _recycle(self, process: Process) -> None:
        if not process.alive or process.stopping or self.state != WatcherState.RUNNING:
            return
        log.info("recycling: %r after max_age=%gs", process, self.config.max_age)
        async with self._lock:
            try:
                await self._replace(process)
            except RestartFailed as exc:
                log.error("recycling failed: %s", exc)

    # -- deaths, respawns, flapping ------------------------------------------

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
            return
        self._after_unexpected_exit(process)

    def _after_spare_exit(self, process: Process, how: str) -> None:
        """A spare never served: its death is no crash of the watcher and
        never makes it flap. One that could not boot is retried after
        retry_in; one that was ready (then killed) is replaced at once."""
        if self.state != WatcherState.RUNNING:
            return
        if process.ready_at is not None:
            log.warning("exited: %r %s (spare; replacing it)", process, how)
            self._spawn_task(self._top_up_spares())
            return
        retry_in = self.config.flapping.retry_in
        log.warning(
            "exited: %r %s (spare failed to boot; next one in %gs)",
            process,
            how,
            retry_in,
        )
        self._schedule(retry_in, lambda: self._spawn_task(self._top_up_spares()))

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
        fast = process.age() < FAST_DEATH_SECONDS
        self._fast_deaths = self._fast_deaths + 1 if fast else 0
        delay = self._backoff_delay()
        if delay:
            log.info(
                "respawn: %s in %.1fs after %d fast deaths",
                self.name,
                delay,
                self._fast_deaths,
            )
            self._schedule(delay, self._reconcile)
        else:
            self._reconcile()

    def _died_young(self, process: Process) -> bool:
        """Before it was ready; or, when readiness is only a guess (warmup,
        none), within the flapping window of its start."""
        if process.ready_at is None:
            return True
        guessed = self.config.ready != "notify"
        return guessed and process.age() < self.config.flapping.window

    def _backoff_delay(self) -> float:
        if self._fast_deaths < 2:
            return 0.0
        return float(min(BACKOFF_FIRST * 2 ** (self._fast_deaths - 2), BACKOFF_MAX))

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
        self._spawn_task(self._stop_flapping(retry=not gave_up))

    async def _stop_flapping(self, *, retry: bool) -> None:
        async with self._lock:
            await self._stop()
            if retry:
                self._set_state(WatcherState.FLAPPING)
                self._schedule(
                    self.config.flapping.retry_in,
                    lambda: self._spawn_task(self.start()),
                )

    def _reconcile(self) -> None:
        """Spawn what is missing to reach numprocesses, in the background."""
        if self.state in (WatcherState.RUNNING, WatcherState.STARTING):
            self._spawn_task(self._refill())

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
        self._spawn_task(self._top_up_spares())
        self._spawning += reserved
        new: list[Process] = []
        try:
            for _ in range(reserved):
                process = await self._spawn()
                self._spawning -= 1
                reserved -= 1
                if process is not None:  # else a retry is scheduled
                    new.append(process)
        finally:
            self._spawning -= reserved
        return new

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
                    self._spawn_task(self._watch_readiness(spare))
        except HookVeto:
            log.warning("%s: a hook vetoed a spare; running without one", self.name)
        finally:
            self._spare_spawning -= max(0, wanted)

    async def _watch_readiness(self, process: Process) -> None:
        """Wait for ``process`` to be ready; a laggard is stopped and counts
        as a death nobody asked for."""
        if await self._wait_ready(process) or not process.alive:
            return
        await self._stop_process(process)
        if self.state == WatcherState.RUNNING and self.config.respawn:
            self._after_unexpected_exit(process)

    # -- plumbing -----------------------------------------------------------

    def _set_state(self, state: WatcherState) -> None:
        if state != self.state:
            log.debug("state: %s %s -> %s", self.name, self.state, state)
            self.state = state
            self._events.emit("state", watcher=self.name, state=str(state))

    def _schedule(self, delay: float, callback: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            callback()

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def _cancel_timers(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    def _spawn_task(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: background step failed", self.name, exc_info=task.exception()
            )

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
                }
                for p in sorted(self.processes.values(), key=lambda p: p.wid)
            ],
        }
