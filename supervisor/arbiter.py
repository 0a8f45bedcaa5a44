"""The arbiter: the supervisor's single asyncio loop.

Theory of operation
-------------------
``run()`` builds an ``Arbiter`` from a validated config and runs its loop
until a stop signal. Start-up is a list of steps: raise the descriptor limit
(each process costs a pidfd and maybe a notify socket), make a private
runtime directory for the notify sockets, bind every socket (a failure here
exits before anything is spawned), then start the watchers in priority order,
highest first, each waiting until its processes are ready.

From then on the loop only reacts. A child's death arrives through its pidfd
(see ``process.py``) and its watcher respawns it. Signals are recorded by
asyncio's handlers into a queue and acted upon here, never inside a handler:
SIGTERM, SIGINT and SIGQUIT stop the watchers in reverse priority and exit 0;
SIGHUP re-reads the config and applies only the difference, and an invalid
new config is rejected whole while the running stack keeps serving.

Nothing in the loop blocks: spawning is a fork+exec, output goes to the
supervisor's own streams, and every wait is an awaitable with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Mapping

from juggler.supervisor import sockets as sockets_mod
from juggler.supervisor.config import ArbiterConfig, WatcherConfig
from juggler.supervisor.errors import BindError, ConfigError
from juggler.supervisor.events import EventBus
from juggler.supervisor.launch import spawn_spec_factory
from juggler.supervisor.sockets import BoundSocket
from juggler.supervisor.watcher import RestartFailed, Watcher

log = logging.getLogger("juggler.supervisor")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class Arbiter:
    """Owns the sockets, the watchers and the loop's reactions to signals."""

    def __init__(self, config: ArbiterConfig, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.events = EventBus()
        self.sockets: dict[str, BoundSocket] = {}
        self.watchers: dict[str, Watcher] = {}
        self.runtime_dir = ""
        self._signals: asyncio.Queue[int] = asyncio.Queue()

    # -- the loop ------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, react to signals until told to stop, clean up."""
        loop = asyncio.get_running_loop()
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            loop.add_signal_handler(signum, self._signals.put_nowait, signum)
        raise_descriptor_limit()
        self.runtime_dir = tempfile.mkdtemp(prefix="juggler-")
        try:
            self.bind_sockets(self.config)
            await self.start_watchers()
            log.info(
                "started: pid=%d watchers=%d sockets=%d",
                os.getpid(),
                len(self.watchers),
                len(self.sockets),
            )
            await self._react_to_signals()
        finally:
            await self.shutdown()
        return 0

    async def _react_to_signals(self) -> None:
        while True:
            signum = await self._signals.get()
            name = signal.Signals(signum).name
            if signum in STOP_SIGNALS:
                log.info("stopping: received %s", name)
                return
            log.info("reloading: received %s", name)
            await self.reload_config()

    # -- start-up and shutdown -------------------------------------------------

    def bind_sockets(self, config: ArbiterConfig) -> None:
        for spec in config.sockets.values():
            self.sockets[spec.name] = sockets_mod.bind(spec)

    def make_watcher(self, config: WatcherConfig) -> Watcher:
        return Watcher(
            config,
            spawn_spec_factory(config, self.sockets),
            self.runtime_dir,
            self.events,
        )

    async def start_watchers(self) -> None:
        for config in by_priority(self.config.watchers.values()):
            watcher = self.make_watcher(config)
            self.watchers[config.name] = watcher
            if config.autostart:
                await watcher.start()

    async def shutdown(self) -> None:
        """Stop watchers in reverse priority, then close the sockets."""
        for watcher in reversed(by_priority_watchers(self.watchers.values())):
            await watcher.stop()
        for bound in self.sockets.values():
            bound.close()
        self.sockets.clear()
        if self.runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        log.info("stopped: pid=%d", os.getpid())

    # -- reload ----------------------------------------------------------------

    async def reload_config(self) -> None:
        """Re-read the config and apply the difference; keep it on errors."""
        if self.config_path is None:
            log.warning("reload: no config file to re-read")
            return
        from juggler.supervisor.config import load

        try:
            new = load(self.config_path)
        except ConfigError as exc:
            for message in exc.errors:
                log.error("reload rejected: %s", message)
            return
        try:
            await self.apply(new)
        except (BindError, RestartFailed) as exc:
            log.error("reload incomplete: %s", exc)
        self.events.emit("reload", path=self.config_path)

    async def apply(self, new: ArbiterConfig) -> None:
        """Move the running stack from ``self.config`` to ``new``."""
        old = self.config
        changed_sockets = self._rebind_changed_sockets(old, new)

        for name in old.watchers.keys() - new.watchers.keys():
            log.info("reload: removing watcher %s", name)
            await self.watchers.pop(name).stop()

        for config in by_priority(new.watchers.values()):
            previous = old.watchers.get(config.name)
            uses_changed = bool(config.sockets & changed_sockets)
            if previous is not None and previous == config and not uses_changed:
                continue
            await self._replace_watcher(config)
        self.config = new

    def _rebind_changed_sockets(
        self, old: ArbiterConfig, new: ArbiterConfig
    ) -> set[str]:
        changed = {
            name
            for name in old.sockets.keys() & new.sockets.keys()
            if old.sockets[name] != new.sockets[name]
        }
        for name in (old.sockets.keys() - new.sockets.keys()) | changed:
            self.sockets.pop(name).close()
        for name in (new.sockets.keys() - old.sockets.keys()) | changed:
            self.sockets[name] = sockets_mod.bind(new.sockets[name])
        return changed

    async def _replace_watcher(self, config: WatcherConfig) -> None:
        """Start the new version of a watcher, then stop the old one."""
        previous = self.watchers.get(config.name)
        action = "adding" if previous is None else "replacing"
        log.info("reload: %s watcher %s", action, config.name)
        watcher = self.make_watcher(config)
        if config.autostart:
            await watcher.start()
            if previous is not None and not all_ready(watcher):
                await watcher.stop()
                raise RestartFailed(
                    f"{config.name}: new processes did not become ready; "
                    "the old ones keep serving"
                )
        self.watchers[config.name] = watcher
        if previous is not None:
            await previous.stop()


def all_ready(watcher: Watcher) -> bool:
    serving = [p for p in watcher.processes.values() if p.alive]
    return len(serving) >= watcher.numprocesses and all(
        p.ready_at is not None for p in serving
    )


def by_priority(configs: object) -> list[WatcherConfig]:
    """Highest priority first, then by name, as Circus orders them."""
    return sorted(configs, key=lambda c: (-c.priority, c.name))  # type: ignore[call-overload, no-any-return]


def by_priority_watchers(watchers: object) -> list[Watcher]:
    return sorted(watchers, key=lambda w: (-w.config.priority, w.name))  # type: ignore[call-overload, no-any-return]


def raise_descriptor_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard one: each child costs fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.debug("descriptor limit raised from %d to %d", soft, hard)


def run(config: ArbiterConfig, config_path: str | None = None) -> int:
    """Run the arbiter until a stop signal; return the exit code."""
    return asyncio.run(Arbiter(config, config_path).run())


__all__ = ["Arbiter", "Mapping", "run"]
