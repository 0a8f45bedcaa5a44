"""The control commands: what ``juggler status``, ``incr``, ``reload`` ... do.

Each command is a coroutine taking the request's ``args``; the control
server runs each request as its own task. Commands that change a watcher
take that watcher's lock (inside ``Watcher``), so operations on different
watchers never wait for each other and read-only commands never wait at all.
Names follow Circus's commands, so a ``circusctl`` user finds their way.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from juggler.supervisor import runtime_options
from juggler.supervisor.config import json_object, to_json
from juggler.supervisor.control import CommandError
from juggler.supervisor.stats import StatsSampler
from juggler.supervisor.watcher import RestartFailed, Watcher, WatcherState

if TYPE_CHECKING:
    from juggler.supervisor.arbiter import Arbiter

Command = Callable[[dict[str, Any]], Awaitable[Any]]


# More processes than this in one watcher is a typo (incr web 10000000),
# and spawning them would exhaust the machine before anyone noticed.
MAX_PROCESSES = 10_000


class Commands:
    """Dispatches control requests to the arbiter and its watchers."""

    def __init__(self, arbiter: Arbiter) -> None:
        self.arbiter = arbiter
        self._stats = StatsSampler()
        self.table: dict[str, Command] = {
            "list": self.list_watchers,
            "status": self.status,
            "start": self.start,
            "stop": self.stop,
            "restart": self.restart,
            "reload": self.reload,
            "reloadconfig": self.reloadconfig,
            "incr": self.incr,
            "decr": self.decr,
            "numprocesses": self.numprocesses,
            "numwatchers": self.numwatchers,
            "signal": self.signal,
            "stats": self.stats,
            "listsockets": self.listsockets,
            "quit": self.quit,
            "options": self.options,
            "get": self.get,
            "set": self.set,
            "globaloptions": self.globaloptions,
            "add": self.add,
            "rm": self.rm,
        }

    async def handle(self, command: str, args: dict[str, Any]) -> Any:
        handler = self.table.get(command)
        if handler is None:
            known = ", ".join(sorted(self.table))
            raise CommandError(f"unknown command {command!r} (known: {known})")
        return await handler(args)

    # -- helpers -----------------------------------------------------------

    def _watcher(self, args: dict[str, Any]) -> Watcher:
        name = args.get("name")
        if not isinstance(name, str):
            raise CommandError("this command needs a watcher name")
        watcher = self.arbiter.watchers.get(name.lower())
        if watcher is None:
            known = ", ".join(sorted(self.arbiter.watchers)) or "none"
            raise CommandError(f"no watcher named {name!r} (watchers: {known})")
        return watcher

    def _targets(self, args: dict[str, Any]) -> list[Watcher]:
        """The named watcher, or all of them in priority order."""
        if args.get("name") is None:
            return list(self.arbiter.ordered_watchers())
        return [self._watcher(args)]

    # -- reading -----------------------------------------------------------

    async def list_watchers(self, args: dict[str, Any]) -> Any:
        if args.get("name") is None:
            return sorted(self.arbiter.watchers)
        return sorted(p.pid for p in self._watcher(args).processes.values())

    async def status(self, args: dict[str, Any]) -> Any:
        if args.get("name") is None:
            return {
                name: w.status() for name, w in sorted(self.arbiter.watchers.items())
            }
        return self._watcher(args).status()

    async def numprocesses(self, args: dict[str, Any]) -> int:
        return sum(w.numprocesses for w in self._targets(args))

    async def numwatchers(self, args: dict[str, Any]) -> int:
        return len(self.arbiter.watchers)

    async def listsockets(self, args: dict[str, Any]) -> Any:
        return [
            {"name": name, "fd": bound.fd, "location": bound.location()}
            for name, bound in sorted(self.arbiter.sockets.items())
        ]

    async def stats(self, args: dict[str, Any]) -> Any:
        """Per-process figures from psutil, read off the event loop."""
        wanted = [
            (w.name, p) for w in self._targets(args) for p in w.processes.values()
        ]
        live = [p for w in self.arbiter.watchers.values() for p in w.processes.values()]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._stats.sample, wanted, live)

    # -- changing ----------------------------------------------------------

    async def start(self, args: dict[str, Any]) -> Any:
        failed = []
        for watcher in self._targets(args):
            await watcher.start()
            if watcher.state == WatcherState.STOPPED:
                failed.append(watcher.start_problem or f"{watcher.name}: see the log")
        if failed:
            raise CommandError(f"did not start: {'; '.join(failed)}")
        return await self.status(args)

    async def stop(self, args: dict[str, Any]) -> Any:
        for watcher in reversed(self._targets(args)):
            await watcher.stop()
        return await self.status(args)

    async def restart(self, args: dict[str, Any]) -> Any:
        rolling = not args.get("all_at_once", False)
        try:
            for watcher in self._targets(args):
                await watcher.restart(rolling=rolling)
        except RestartFailed as exc:
            raise CommandError(str(exc)) from None
        return await self.status(args)

    async def reload(self, args: dict[str, Any]) -> Any:
        """Graceful: new processes ready before old ones stop (or SIGHUP)."""
        targets = self._targets(args)
        for watcher in targets:
            if watcher.config.send_hup:
                watcher.signal(signal.SIGHUP)
        rolling = [w for w in targets if not w.config.send_hup]
        try:
            for watcher in rolling:
                await watcher.restart(rolling=True)
        except RestartFailed as exc:
            raise CommandError(str(exc)) from None
        return await self.status(args)

    async def reloadconfig(self, args: dict[str, Any]) -> Any:
        errors = await self.arbiter.reload_config()
        if errors:
            raise CommandError("; ".join(errors))
        return sorted(self.arbiter.watchers)

    async def incr(self, args: dict[str, Any]) -> int:
        return await self._change_count(args, +1)

    async def decr(self, args: dict[str, Any]) -> int:
        return await self._change_count(args, -1)

    async def _change_count(self, args: dict[str, Any], sign: int) -> int:
        watcher = self._watcher(args)
        step = args.get("nb", 1)
        if not isinstance(step, int) or step < 0:
            raise CommandError("the count must be a whole number of 0 or more")
        target = watcher.numprocesses + sign * step
        if target > MAX_PROCESSES:
            raise CommandError(
                f"{watcher.name}: {target} processes is more than one watcher "
                f"may have ({MAX_PROCESSES})"
            )
        if watcher.config.singleton and target > 1:
            raise CommandError(f"{watcher.name} is a singleton: at most 1 process")
        await watcher.set_numprocesses(target)
        return watcher.numprocesses

    async def signal(self, args: dict[str, Any]) -> int:
        watcher = self._watcher(args)
        signum = _signal_number(args.get("signum"))
        children = bool(args.get("children", False))
        pid = args.get("pid")
        if pid is None:
            return watcher.signal(signum, children=children)
        process = next((p for p in watcher.processes.values() if p.pid == pid), None)
        if process is None:
            raise CommandError(f"{watcher.name} has no process with pid {pid}")
        return int(process.send_signal(signum, group=children))

    # -- options and watchers at run time ------------------------------------

    async def options(self, args: dict[str, Any]) -> Any:
        return json_object(self._watcher(args).config)

    async def get(self, args: dict[str, Any]) -> Any:
        options = json_object(self._watcher(args).config)
        keys = args.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CommandError("get needs a list of option names (keys)")
        unknown = [key for key in keys if key not in options]
        if unknown:
            raise CommandError(f"unknown option(s): {', '.join(unknown)}")
        return {key: options[key] for key in keys}

    async def set(self, args: dict[str, Any]) -> Any:
        """Change options, written as in the INI file; checked like it."""
        watcher = self._watcher(args)
        given = args.get("options")
        if not isinstance(given, dict) or not given:
            raise CommandError("set needs KEY VALUE pairs")
        values = runtime_options.read_options(given)
        config = runtime_options.changed(watcher.config, values, self.arbiter.sockets)
        await self.arbiter.reconfigure_watcher(watcher, config)
        return {
            "changed": sorted(values),
            "note": "numprocesses applies now; the rest to processes spawned "
            "from now on (restart the watcher to apply it to all)",
        }

    async def globaloptions(self, args: dict[str, Any]) -> Any:
        return to_json(self.arbiter.config)["circus"]

    async def add(self, args: dict[str, Any]) -> Any:
        """A new watcher: a name, a cmd and options as in the INI file."""
        name, cmd = args.get("name"), args.get("cmd")
        if not isinstance(name, str) or not isinstance(cmd, str) or not cmd:
            raise CommandError("add needs a NAME and a CMD")
        name = name.lower()
        if name in self.arbiter.watchers:
            raise CommandError(f"a watcher named {name!r} exists already")
        values = runtime_options.read_options(args.get("options") or {})
        config = runtime_options.added(
            name, cmd, values, self.arbiter.sockets, self.arbiter.config.env
        )
        watcher = await self.arbiter.add_watcher(config, start=bool(args.get("start")))
        return watcher.status()

    async def rm(self, args: dict[str, Any]) -> Any:
        watcher = self._watcher(args)
        await self.arbiter.remove_watcher(watcher.name)
        return sorted(self.arbiter.watchers)

    async def quit(self, args: dict[str, Any]) -> str:
        self.arbiter.request_stop()
        return "stopping"


def _signal_number(value: object) -> int:
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        try:
            number = int(value) if value.isdigit() else signal.Signals[name].value
        except KeyError:
            raise CommandError(f"unknown signal {value!r}") from None
    else:
        raise CommandError("signal needs a signal name or number")
    try:
        signal.Signals(number)
    except ValueError:
        raise CommandError(f"unknown signal number {number}") from None
    return number
