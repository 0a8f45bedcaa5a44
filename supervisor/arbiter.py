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
SIGHUP re-reads the config and applies only the difference, as one
transaction (``reload.py``): an invalid new config is rejected whole, and a
reload that fails on the way (a socket that cannot be bound, new processes
that are not ready) is rolled back, so the running stack keeps serving as
it was. ``step`` is one turn of that loop: tests feed it signals.

Nothing in the loop blocks: spawning is a fork+exec, captured output is read
from non-blocking pipes (``streams.py``), hooks and stats sampling run in
threads, and every wait is an awaitable with a deadline. The control
channel (``control.py``) runs each request as its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from juggler.supervisor import endpoint, lifeline, notify, reload
from juggler.supervisor import sockets as sockets_mod
from juggler.supervisor.commands import Commands
from juggler.supervisor.config import ArbiterConfig, WatcherConfig, to_uid
from juggler.supervisor.control import ControlServer
from juggler.supervisor.errors import (
    BindError,
    ConfigError,
    SpawnError,
    SupervisorError,
)
from juggler.supervisor.events import EventBus
from juggler.supervisor.launch import spawn_spec_factory
from juggler.supervisor.reload import by_priority, by_priority_watchers
from juggler.supervisor.sockets import BoundSocket
from juggler.supervisor.watcher import RestartFailed, Watcher

log = logging.getLogger("juggler.supervisor")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# What asyncio calls an accept that failed for want of descriptors or memory.
ACCEPT_FAILED = "socket.accept() out of system resource"
ACCEPT_LOG_INTERVAL = 10.0


class Arbiter:
    """Owns the sockets, the watchers and the loop's reactions to signals."""

    def __init__(self, config: ArbiterConfig) -> None:
        self.config = config
        self.events = EventBus()
        self.sockets: dict[str, BoundSocket] = {}
        self.watchers: dict[str, Watcher] = {}
        self.runtime_dir = ""
        self.control: ControlServer | None = None
        self._control_path = ""
        self._token_path = ""
        self._signals: asyncio.Queue[int] = asyncio.Queue()
        # One change of the watcher set at a time: reload, add, rm, set.
        self._changing = asyncio.Lock()

    # -- the loop ------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, react to signals until told to stop, clean up."""
        # First of all, before any thread or child: see lifeline.py.
        lifeline.start()
        asyncio.get_running_loop().set_exception_handler(LoopErrors())
        self.install_signal_handlers()
        raise_descriptor_limit()
        self.runtime_dir = notify.make_runtime_dir()
        try:
            self.bind_sockets(self.config)
            await self.start_control()
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
            lifeline.close()
        return 0

    def install_signal_handlers(self) -> None:
        """Have asyncio record our signals in the queue ``step`` reads."""
        loop = asyncio.get_running_loop()
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            loop.add_signal_handler(signum, self._signals.put_nowait, signum)

    async def _react_to_signals(self) -> None:
        while not await self.step():
            pass

    async def step(self) -> bool:
        """Act on the next recorded signal; True when it asks to stop."""
        signum = await self._signals.get()
        name = signal.Signals(signum).name
        if signum in STOP_SIGNALS:
            log.info("stopping: received %s", name)
            return True
        log.info("reloading: received %s", name)
        try:
            await self.reload_config()
        except Exception:
            # A bug in a reload must not take the running stack with it.
            log.exception("reload failed unexpectedly; the stack keeps running")
        return False

    # -- start-up and shutdown -------------------------------------------------

    def bind_sockets(self, config: ArbiterConfig) -> None:
        for spec in config.sockets.values():
            self.sockets[spec.name] = sockets_mod.bind(spec)

    def make_watcher(
        self,
        config: WatcherConfig,
        sockets: Mapping[str, BoundSocket] | None = None,
    ) -> Watcher:
        """A watcher of ``config`` using ``sockets`` (the arbiter's if None)."""
        return Watcher(
            config,
            spawn_spec_factory(config, self.sockets if sockets is None else sockets),
            self.runtime_dir,
            self.events,
        )

    async def start_watchers(self) -> None:
        """Highest priority first, [circus] warmup_delay apart."""
        for index, config in enumerate(by_priority(self.config.watchers.values())):
            watcher = self.make_watcher(config)
            self.watchers[config.name] = watcher
            if not config.autostart:
                continue
            if index and self.config.warmup_delay > 0:
                await asyncio.sleep(self.config.warmup_delay)
            await watcher.start()

    async def start_control(self) -> None:
        """Listen for control commands (see control.py for who may)."""
        # JUGGLER_ENDPOINT is where the CLI looks too when the config is silent.
        where = endpoint.parse(
            self.config.endpoint or os.environ.get("JUGGLER_ENDPOINT")
        )
        token = None
        if where.kind == "tcp":
            token = self._control_token(where)
        self.control = ControlServer(
            Commands(self).handle,
            self.events,
            token=token,
            allowed_uids=self.config.allowed_users,
        )
        try:
            if where.kind == "tcp":
                await self.control.listen_tcp(where.host, where.port)
            else:
                await self._listen_unix_control(where.path)
        except OSError as exc:
            raise SupervisorError(f"control endpoint {where}: {exc}") from None

    def _control_token(self, where: endpoint.Endpoint) -> str:
        for key in ("endpoint_owner", "allowed_users"):
            if getattr(self.config, key):
                log.warning(
                    "control: %s ignored: it applies to a UNIX endpoint "
                    "(TCP clients prove themselves with the token)",
                    key,
                )
        if self.config.token_file:
            return endpoint.read_token(self.config.token_file)
        token = endpoint.generate_token(where)
        self._token_path = endpoint.token_path(where)
        log.info("control: token for %s is in %s", where, self._token_path)
        return token

    async def _listen_unix_control(self, path: str) -> None:
        if endpoint.is_live(path):
            raise SupervisorError(
                f"control endpoint unix://{path} is in use by a running juggler; "
                "give this one its own [circus] endpoint"
            )
        owner = None
        if self.config.endpoint_owner:
            try:
                owner = to_uid(self.config.endpoint_owner)
            except ValueError as exc:
                raise SupervisorError(f"endpoint_owner: {exc}") from None
        assert self.control is not None
        await self.control.listen_unix(path, owner=owner)
        self._control_path = path

    async def add_watcher(self, config: WatcherConfig, *, start: bool) -> Watcher:
        """Add a watcher at run time (the ``add`` command)."""
        async with self._changing:
            watcher = self.make_watcher(config)
            self.watchers[config.name] = watcher
            self.config = replace(
                self.config, watchers={**self.config.watchers, config.name: config}
            )
        if start:
            await watcher.start()
        return watcher

    async def remove_watcher(self, name: str) -> None:
        """Stop a watcher and forget it (the ``rm`` command)."""
        async with self._changing:
            watcher = self.watchers.pop(name)
            self.config = replace(
                self.config,
                watchers={k: v for k, v in self.config.watchers.items() if k != name},
            )
        await watcher.stop()

    async def reconfigure_watcher(
        self, watcher: Watcher, config: WatcherConfig
    ) -> None:
        """Give a watcher new options (the ``set`` command)."""
        async with self._changing:
            launcher = spawn_spec_factory(config, self.sockets)
            self.config = replace(
                self.config, watchers={**self.config.watchers, config.name: config}
            )
        # Applied outside the arbiter's lock: waiting for this watcher (a
        # stop in its graceful timeout, say) must not hold up the others.
        await watcher.reconfigure(config, launcher)

    def request_stop(self) -> None:
        """Stop as on SIGTERM (the ``quit`` command)."""
        self._signals.put_nowait(signal.SIGTERM)

    def ordered_watchers(self) -> list[Watcher]:
        """Watchers in priority order, highest first."""
        return by_priority_watchers(self.watchers.values())

    async def shutdown(self) -> None:
        """Stop watchers in reverse priority, then close the sockets."""
        if self.control is not None:
            await self.control.close()
        for watcher in reversed(self.ordered_watchers()):
            await watcher.stop()
        for bound in self.sockets.values():
            bound.close()
        self.sockets.clear()
        if self.runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        if self._control_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._control_path)
        if self._token_path:
            endpoint.remove_token(self._token_path)
        log.info("stopped: pid=%d", os.getpid())

    # -- reload ----------------------------------------------------------------

    async def reload_config(self) -> list[str]:
        """Re-read the config and apply the difference; keep it on errors.

        Returns the errors, if any: then the running stack is as it was.
        """
        from juggler.supervisor.config import load

        async with self._changing:
            try:
                new = load(self.config.path)
            except ConfigError as exc:
                for message in exc.errors:
                    log.error("reload rejected: %s", message)
                return list(exc.errors)
            try:
                await self.apply(new)
            except (BindError, SpawnError, RestartFailed) as exc:
                log.error("reload failed: %s", exc)
                return [str(exc)]
        self.events.emit("reload", path=new.path)
        return []

    async def apply(self, new: ArbiterConfig) -> None:
        """Move the running stack from ``self.config`` to ``new``, all or
        nothing (see reload.py); the caller holds ``_changing``."""
        for key in reload.unreloaded_changes(self.config, new):
            log.warning(
                "reload: [circus] %s changed; it takes effect at the next start", key
            )
        steps = reload.plan(self.config, new)
        await reload.Transaction(self, new, steps).run()


class LoopErrors:
    """The loop's exception handler: one line for an accept that fails.

    Out of descriptors, asyncio (3.11) reports a failed accept of the
    control socket once for each connection it could have taken (100), and
    again each second while a client waits: a hundred tracebacks a second
    for one cause. Said once per ``ACCEPT_LOG_INTERVAL`` here; anything
    else goes to asyncio's own handler.
    """

    def __init__(self) -> None:
        self._logged_at = -ACCEPT_LOG_INTERVAL

    def __call__(
        self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]
    ) -> None:
        if context.get("message") != ACCEPT_FAILED:
            loop.default_exception_handler(context)
            return
        if loop.time() - self._logged_at >= ACCEPT_LOG_INTERVAL:
            self._logged_at = loop.time()
            log.error(
                "control: cannot accept a connection: %s; retrying each second",
                context.get("exception"),
            )


def raise_descriptor_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard one: each child costs fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.debug("descriptor limit raised from %d to %d", soft, hard)


def run(config: ArbiterConfig) -> int:
    """Run the arbiter until a stop signal; return the exit code."""
    return asyncio.run(Arbiter(config).run())
