"""SIGHUP: move the running stack to a new config, all of it or none of it.

A reload is planned before anything is touched (``plan``): which sockets
stay as they are, which change in place, which are bound anew, and which
watchers are added, removed, replaced or only resized. ``Transaction`` then
takes the steps that can fail, each with its undo, in this order:

1. Sockets. A new or changed socket is bound *before* the old one is
   closed, so a worker that still serves the old one never loses it; a
   change a bound socket can take (backlog, umask, blocking) is made in
   place and keeps the descriptor, so its watchers need no new processes.
2. Watchers, highest priority first. A new watcher is started; a changed
   watcher that serves juggler's sockets gets a new copy started next to
   the old one, which goes on serving until the new processes are ready.
   A changed watcher that uses no juggler socket (redis-server binding its
   own port) or is a singleton cannot have two copies: the old one is
   stopped first, and started again if the reload is rolled back. A
   watcher whose ``numprocesses`` alone changed is resized in place.

If a step fails (a socket cannot be bound, a new process is not ready in
time) every step taken is undone in reverse order, and the arbiter's
config, watchers and sockets are exactly what they were. Otherwise the
transaction commits: the arbiter takes the new config, watchers and
sockets in one synchronous step, then stops the old copies and the removed
watchers (lowest priority first) and closes the sockets no watcher uses.

``[circus]`` options (endpoint, log settings...) are read at start only; a
reload that changes them says so and keeps the running values.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from juggler.supervisor import sockets as sockets_mod
from juggler.supervisor.config_model import ArbiterConfig, SocketConfig, WatcherConfig
from juggler.supervisor.errors import BindError
from juggler.supervisor.sockets import BoundSocket
from juggler.supervisor.watcher import RestartFailed, Watcher, WatcherState

if TYPE_CHECKING:
    from juggler.supervisor.arbiter import Arbiter

log = logging.getLogger("juggler.supervisor")

# The parts of a config a reload applies; the other [circus] fields stay.
RELOADED = ("sockets", "watchers", "env", "files", "warnings")

Undo = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Plan:
    """What a reload changes, by name."""

    adjusted: Mapping[str, str]  # new socket name -> the old one it reuses
    bound: frozenset[str]  # sockets bound anew (added or changed)
    closed: frozenset[str]  # old sockets closed at commit
    added: frozenset[str]
    removed: frozenset[str]
    replaced: frozenset[str]
    resized: frozenset[str]

    def summary(self) -> str:
        parts = [
            f"{label}={','.join(sorted(names))}"
            for label, names in (
                ("added", self.added),
                ("replaced", self.replaced),
                ("resized", self.resized),
                ("removed", self.removed),
                ("sockets_bound", self.bound),
                ("sockets_adjusted", set(self.adjusted)),
                ("sockets_closed", self.closed),
            )
            if names
        ]
        return " ".join(parts) or "no change"


def plan(old: ArbiterConfig, new: ArbiterConfig) -> Plan:
    """Compare two configs; nothing is touched."""
    adjusted = _adjusted_sockets(old, new)
    same = {n for n in old.sockets.keys() & new.sockets.keys() if n not in adjusted}
    same = {n for n in same if old.sockets[n] == new.sockets[n]}
    bound = frozenset(new.sockets.keys() - same - adjusted.keys())
    kept = same | set(adjusted.values())
    # A watcher must be replaced when a socket it uses gets a new descriptor.
    renewed = bound & old.sockets.keys()
    added, replaced, resized = set(), set(), set()
    for name, config in new.watchers.items():
        previous = old.watchers.get(name)
        if previous is None:
            added.add(name)
        elif config.sockets & renewed:
            replaced.add(name)
        elif previous == config:
            continue
        elif replace(previous, numprocesses=config.numprocesses) == config:
            resized.add(name)
        else:
            replaced.add(name)
    return Plan(
        adjusted=adjusted,
        bound=bound,
        closed=frozenset(old.sockets.keys() - kept),
        added=frozenset(added),
        removed=frozenset(old.watchers.keys() - new.watchers.keys()),
        replaced=frozenset(replaced),
        resized=frozenset(resized),
    )


def _adjusted_sockets(old: ArbiterConfig, new: ArbiterConfig) -> dict[str, str]:
    """Sockets that change in place: same name, or a rename of a removed one."""
    adjusted = {
        name: name
        for name in old.sockets.keys() & new.sockets.keys()
        if old.sockets[name] != new.sockets[name]
        and sockets_mod.adjustable(old.sockets[name], new.sockets[name])
    }
    gone = sorted(old.sockets.keys() - new.sockets.keys())
    for name in sorted(new.sockets.keys() - old.sockets.keys()):
        match = next(
            (
                g
                for g in gone
                if sockets_mod.adjustable(old.sockets[g], new.sockets[name])
            ),
            None,
        )
        if match is not None:
            adjusted[name] = match
            gone.remove(match)
    return adjusted


def unreloaded_changes(old: ArbiterConfig, new: ArbiterConfig) -> list[str]:
    """``[circus]`` options that differ; a reload does not apply them."""
    skip = {*RELOADED, "path"}
    return [
        f.name
        for f in dataclasses.fields(ArbiterConfig)
        if f.name not in skip and getattr(old, f.name) != getattr(new, f.name)
    ]


def is_exclusive(config: WatcherConfig) -> bool:
    """Whether two copies of this watcher could not run side by side."""
    return config.singleton or not config.sockets


class Transaction:
    """One reload of ``arbiter`` to ``new``: run every step, or none."""

    def __init__(self, arbiter: Arbiter, new: ArbiterConfig, steps: Plan) -> None:
        self.arbiter = arbiter
        self.new = new
        self.plan = steps
        self._undo: list[Undo] = []
        self._sockets: dict[str, BoundSocket] = {}
        self._watchers: dict[str, Watcher] = {}
        self._retired: list[Watcher] = []  # old copies stopped at commit

    async def run(self) -> None:
        """Apply the plan; on any failure undo what was done and re-raise."""
        try:
            self._stage_sockets()
            for config in by_priority(self.new.watchers.values()):
                await self._stage_watcher(config)
        except BaseException as exc:  # cancellation too: never half-applied
            log.error("reload: rolling back: %s", exc)
            await self._roll_back()
            raise
        await self._commit()

    # -- the steps that may fail --------------------------------------------

    def _stage_sockets(self) -> None:
        current = self.arbiter.sockets
        for name, spec in self.new.sockets.items():
            source = self.plan.adjusted.get(name)
            if source is not None:
                self._adjust(current[source], spec)
                self._sockets[name] = current[source]
            elif name in self.plan.bound:
                log.info("reload: binding socket %s", name)
                bound = _bind(spec, current.get(name))
                self._undo.append(_closer(bound))
                self._sockets[name] = bound
            else:
                self._sockets[name] = current[name]

    def _adjust(self, bound: BoundSocket, spec: SocketConfig) -> None:
        previous = bound.spec

        async def undo() -> None:
            sockets_mod.adjust(bound, previous)

        sockets_mod.adjust(bound, spec)
        self._undo.append(undo)

    async def _stage_watcher(self, config: WatcherConfig) -> None:
        name = config.name
        old = self.arbiter.watchers.get(name)
        if old is None or name in self.plan.replaced:
            stop_first = old is not None and is_exclusive(config)
            if old is not None and stop_first:
                await self._stop_first(old)
            elif old is not None:
                self._retired.append(old)
            await self._start_new(config, replacing=old is not None, quiet=stop_first)
        elif name in self.plan.resized:
            await self._resize(old, config)
        else:
            self._watchers[name] = old

    async def _stop_first(self, old: Watcher) -> None:
        log.info(
            "reload: replacing watcher %s (old copy stopped first: it %s)",
            old.name,
            "is a singleton" if old.config.singleton else "uses no juggler socket",
        )
        was_stopped = old.state == WatcherState.STOPPED

        async def undo() -> None:
            if not was_stopped:
                log.info("reload: starting watcher %s again", old.name)
                await old.start()

        self._undo.append(undo)
        await old.stop()

    async def _start_new(
        self, config: WatcherConfig, *, replacing: bool, quiet: bool = False
    ) -> None:
        if not quiet:
            action = "replacing" if replacing else "adding"
            log.info("reload: %s watcher %s", action, config.name)
        watcher = self.arbiter.make_watcher(config, self._sockets)
        self._undo.append(watcher.stop)
        self._watchers[config.name] = watcher
        if not config.autostart:
            return
        await watcher.start()
        if not all_ready(watcher):
            raise RestartFailed(
                f"{config.name}: new processes did not become ready; "
                "the reload is rolled back and the running stack is unchanged"
            )

    async def _resize(self, watcher: Watcher, config: WatcherConfig) -> None:
        before_config, before = watcher.config, watcher.numprocesses
        log.info(
            "reload: resizing watcher %s numprocesses %d -> %d",
            config.name,
            before,
            config.numprocesses,
        )

        async def undo() -> None:
            watcher.config = before_config
            await watcher.set_numprocesses(before)

        self._undo.append(undo)
        # Nothing but numprocesses differs, so the running launcher, hooks
        # and streams stay (a new launcher would open the streams twice).
        watcher.config = config
        await watcher.set_numprocesses(config.numprocesses)
        self._watchers[config.name] = watcher

    async def _roll_back(self) -> None:
        for undo in reversed(self._undo):
            try:
                await undo()
            except Exception:  # keep undoing the rest
                log.exception("reload: a rollback step failed")
        self._undo.clear()

    # -- commit: nothing below may fail ---------------------------------------

    async def _commit(self) -> None:
        arbiter, old_sockets = self.arbiter, dict(self.arbiter.sockets)
        removed = [
            watcher
            for name in sorted(self.plan.removed)
            if (watcher := arbiter.watchers.get(name)) is not None
        ]
        arbiter.config = replace(
            arbiter.config, **{key: getattr(self.new, key) for key in RELOADED}
        )
        arbiter.watchers = self._watchers
        arbiter.sockets = self._sockets
        log.info("reloaded: %s", self.plan.summary())

        for watcher in reversed(by_priority_watchers(self._retired + removed)):
            if watcher in removed:
                log.info("reload: removing watcher %s", watcher.name)
            await watcher.stop()
        for name in sorted(self.plan.closed):
            bound = old_sockets[name]
            log.info("reload: closing socket %s on %s", name, bound.location())
            bound.close()


def _bind(spec: SocketConfig, running: BoundSocket | None) -> BoundSocket:
    """Bind ``spec``; say so when the socket it replaces holds the address."""
    try:
        return sockets_mod.bind(spec)
    except BindError as exc:
        old = running.spec if running is not None else None
        if old is None or (old.host, old.port, old.path) != (
            spec.host,
            spec.port,
            spec.path,
        ):
            raise
        changed = [
            f.name
            for f in dataclasses.fields(SocketConfig)
            if getattr(old, f.name) != getattr(spec, f.name)
        ]
        raise BindError(
            f"{exc} (the running socket {spec.name} holds that address; "
            f"changing {', '.join(changed)} there needs a restart of juggler)"
        ) from None


def _closer(bound: BoundSocket) -> Undo:
    async def close() -> None:
        bound.close()

    return close


def all_ready(watcher: Watcher) -> bool:
    """Whether the watcher has its count of serving processes, all ready."""
    serving = [
        p
        for p in watcher.processes.values()
        if p.alive and not p.stopping and not p.spare
    ]
    return len(serving) >= watcher.numprocesses and all(
        p.ready_at is not None for p in serving
    )


def by_priority(configs: Iterable[WatcherConfig]) -> list[WatcherConfig]:
    """Highest priority first, then by name, as Circus orders them."""
    return sorted(configs, key=lambda c: (-c.priority, c.name))


def by_priority_watchers(watchers: Iterable[Watcher]) -> list[Watcher]:
    return sorted(watchers, key=lambda w: (-w.config.priority, w.name))
