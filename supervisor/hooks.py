"""Hooks: user functions a watcher calls around its lifecycle (``hooks.*``).

The juggler contract
--------------------
``hooks.NAME = module.function`` (or ``module:function``), optionally
followed by ``, true`` to ignore its failures. The function is imported
when the watcher is made, from ``sys.path`` and the ``PYTHONPATH`` of the
watcher's environment (as Circus did). It is called as::

    hook(watcher=WatcherInfo, arbiter=ArbiterInfo, hook_name=NAME, **kwargs)

and succeeds when it returns a true value (Circus hooks ``return True``).
Returning False or None, raising, or running past ``HOOK_TIMEOUT`` seconds
is a failure: one log line names the watcher, the hook and its target (the
traceback follows at debug level), and the action is vetoed unless the hook
ignores failures:

=============  ====================  =====================================
hook           kwargs                a failure...
=============  ====================  =====================================
before_start                         keeps the watcher stopped
after_start                          stops the watcher again
before_spawn                         spawns nothing and stops the watcher;
                                     a rolling restart fails instead and
                                     the old process keeps serving
after_spawn    wid, pid              stops that process, then as above
before_stop                          is only logged
after_stop                           is only logged
before_signal  pid, signum           keeps the stop signal from being
                                     sent (SIGKILL after graceful_timeout
                                     still is)
after_signal   pid, signum           is only logged
before_reap    process_pid, time     is only logged
after_reap     process_pid, time,    is only logged
               exit_code,
               process_status
=============  ====================  =====================================

Where juggler differs from Circus
---------------------------------
- A hook runs in a thread of its own and the arbiter waits for it at most
  ``HOOK_TIMEOUT`` (30 s; ``JUGGLER_HOOK_TIMEOUT`` in the environment
  changes it), so a hook that hangs never stalls other watchers or the
  control channel. Python cannot kill a thread: a hook cut at its timeout
  keeps running in the background, and is logged as such.
- ``watcher`` and ``arbiter`` are read-only snapshots (``WatcherInfo``,
  ``ArbiterInfo``), not the live objects: code in another thread must not
  change the arbiter's state under it. A hook that wants to act on the
  stack uses the control channel, as ``juggler`` does.
- ``ignore_failure`` also forgives a False return; Circus forgave only
  exceptions.
- Both reap hooks run after the kernel reaped the child (juggler reaps it
  the moment it dies, through its pidfd), in the background: they delay
  no respawn. ``process_status`` is None when juggler stopped the process
  and ``"exited"`` when it died by itself; ``exit_code`` is negative for a
  signal, as in Circus.
- The arbiter's config is not in ``ArbiterInfo``: the arbiter does not
  hand it to the watcher.

Known shortcomings: ``extended_stats`` is never called, because ``juggler
stats`` has no extended mode (``Commands.stats`` would call it per
process); ``juggler signal`` does not run ``before_signal``/``after_signal``
(``Watcher.signal`` is synchronous and answers with a count; it would need
an asynchronous path). Importing a hook's module runs its top-level code on
the arbiter's thread, once, when the watcher is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from juggler.supervisor.config_model import HookConfig, WatcherConfig
from juggler.supervisor.errors import SupervisorError

log = logging.getLogger("juggler.supervisor")


def _timeout_from_env() -> float:
    try:
        return float(os.environ.get("JUGGLER_HOOK_TIMEOUT", "30"))
    except ValueError:
        return 30.0


HOOK_TIMEOUT = _timeout_from_env()
NEVER_CALLED = {
    "extended_stats": "juggler stats has no extended mode",
}


class HookError(SupervisorError):
    """A hook (or a custom stream class) cannot be imported or used."""


class HookVeto(Exception):
    """A hook failed, and the action it guards must not happen."""


@dataclass(frozen=True)
class WatcherInfo:
    """What a hook learns of its watcher, taken when the hook is called."""

    name: str
    state: str
    numprocesses: int
    pids: tuple[int, ...]
    config: WatcherConfig

    @property
    def env(self) -> Mapping[str, str]:
        return self.config.env


@dataclass(frozen=True)
class ArbiterInfo:
    """What a hook learns of the arbiter: its pid and its sockets."""

    pid: int
    sockets: Mapping[str, str]  # name -> location (host:port or unix:PATH)


class WatcherLike(Protocol):
    """What ``Hooks.call`` reads of a watcher (``watcher.Watcher``)."""

    name: str
    numprocesses: int
    config: WatcherConfig

    @property
    def processes(self) -> Mapping[int, Any]: ...

    @property
    def state(self) -> Any: ...


@dataclass(frozen=True)
class Hook:
    """One imported hook and the config line it came from."""

    config: HookConfig
    function: Callable[..., Any]


class Hooks:
    """A watcher's hooks, imported when it is made and called off the loop.

    ``problem`` is set when the watcher must not start: a hook (or a
    stream, see ``launch.py``) that could not be loaded, in one line.
    """

    def __init__(
        self,
        watcher: str,
        hooks: Mapping[str, Hook],
        sockets: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        self.watcher = watcher
        self.hooks = dict(hooks)
        self.problem: str | None = None
        self._sockets = sockets
        self._running: set[asyncio.Task[Any]] = set()

    @classmethod
    def load(
        cls, config: WatcherConfig, sockets: Callable[[], Mapping[str, str]] = dict
    ) -> Hooks:
        """Import every hook of ``config``; ``HookError`` names the first
        that fails."""
        path = search_path(config.env)
        hooks = {}
        for name, hook in sorted(config.hooks.items()):
            if name in NEVER_CALLED:
                log.warning(
                    "%s: hooks.%s is never called (%s)",
                    config.name,
                    name,
                    NEVER_CALLED[name],
                )
            try:
                function = import_target(hook.target, path)
            except HookError as exc:
                raise HookError(
                    f"{config.name}: hooks.{name} = {hook.target}: {exc}"
                ) from None
            if not callable(function):
                raise HookError(
                    f"{config.name}: hooks.{name} = {hook.target}: not a function"
                )
            hooks[name] = Hook(hook, function)
        return cls(config.name, hooks, sockets)

    def has(self, name: str) -> bool:
        return name in self.hooks

    async def call(self, name: str, watcher: WatcherLike, **kwargs: Any) -> bool:
        """Run hook ``name``; True if it passed or its failure is ignored."""
        hook = self.hooks.get(name)
        if hook is None:
            return True
        kwargs = {
            "watcher": self._watcher_info(watcher),
            "arbiter": ArbiterInfo(os.getpid(), dict(self._sockets())),
            "hook_name": name,
            **kwargs,
        }
        failure = await self._run(hook, kwargs)
        if failure is None:
            return True
        verdict = "ignored" if hook.config.ignore_failure else "vetoed"
        log.error(
            "hook failed: %s %s (%s) %s; %s",
            self.watcher,
            name,
            hook.config.target,
            failure,
            verdict,
        )
        return hook.config.ignore_failure

    async def check(self, name: str, watcher: WatcherLike, **kwargs: Any) -> None:
        """Run hook ``name``; raise ``HookVeto`` if it vetoed the action."""
        if not await self.call(name, watcher, **kwargs):
            raise HookVeto(f"{self.watcher}: hook {name} vetoed it")

    def call_soon(self, name: str, watcher: WatcherLike, **kwargs: Any) -> None:
        """Run a hook whose result changes nothing, in the background."""
        if self.has(name):
            self._background(self.call(name, watcher, **kwargs))

    def reaped(
        self, watcher: WatcherLike, pid: int, status: int, stopped: bool
    ) -> None:
        """A process was reaped: run before_reap, then after_reap, in the
        background (their results change nothing)."""
        if not (self.has("before_reap") or self.has("after_reap")):
            return
        when = time.time()
        facts = {
            "exit_code": os.waitstatus_to_exitcode(status),
            "process_status": None if stopped else "exited",
        }

        async def both() -> None:
            await self.call("before_reap", watcher, process_pid=pid, time=when)
            await self.call("after_reap", watcher, process_pid=pid, time=when, **facts)

        self._background(both())

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _watcher_info(self, watcher: WatcherLike) -> WatcherInfo:
        return WatcherInfo(
            name=watcher.name,
            state=str(watcher.state),
            numprocesses=watcher.numprocesses,
            pids=tuple(sorted(watcher.processes)),
            config=watcher.config,
        )

    async def _run(self, hook: Hook, kwargs: dict[str, Any]) -> str | None:
        """None if the hook returned a true value, else what went wrong."""
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(
                in_thread(hook.function, kwargs, f"hook-{hook.config.name}"),
                HOOK_TIMEOUT,
            )
        except TimeoutError:
            return (
                f"did not return within {HOOK_TIMEOUT:g}s (its thread is left running)"
            )
        except Exception as exc:
            log.debug("hook %s raised", hook.config.name, exc_info=exc)
            return f"raised {type(exc).__name__}: {exc}"
        log.debug(
            "hook: %s %s returned %r in %.3fs",
            self.watcher,
            hook.config.name,
            result,
            time.monotonic() - started,
        )
        return None if result else f"returned {result!r}"


def in_thread(
    function: Callable[..., Any], kwargs: dict[str, Any], name: str
) -> asyncio.Future[Any]:
    """Call ``function(**kwargs)`` in a new daemon thread.

    Not the loop's default executor: hooks that hang would fill its few
    workers and starve everything else that uses it (``juggler stats``).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return  # cut at its timeout
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = function(**kwargs), None
        except Exception as exc:
            result, error = None, exc
        # RuntimeError: the loop is closed, the supervisor has stopped.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def search_path(env: Mapping[str, str]) -> list[str]:
    """Folders of the watcher's PYTHONPATH, where its hooks may live."""
    value = env.get("PYTHONPATH", "")
    return [p for p in value.split(os.pathsep) if p]


def import_target(target: str, path: Sequence[str] = ()) -> Any:
    """The object ``module.attr`` or ``module:attr.attr`` names.

    Folders in ``path`` are added to ``sys.path`` for good, as Circus did:
    the module may import its neighbours later. A module that is missing is
    told apart from an ImportError raised inside the user's own module.
    """
    for folder in path:
        if folder not in sys.path:
            sys.path.append(folder)
    if ":" in target:
        module_name, _, attrs = target.partition(":")
    else:
        module_name, _, attrs = target.rpartition(".")
    if not module_name or not attrs:
        raise HookError(f"expected module.function or module:function, got {target!r}")
    module = _import(module_name)
    obj: Any = module
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise HookError(
                f"module {module_name!r} has no attribute {attrs!r}"
            ) from None
    return obj


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise HookError(f"no module named {missing!r}") from None
        log.debug("importing %s failed", module_name, exc_info=exc)
        raise HookError(f"importing {module_name} failed: {exc}") from None
    except Exception as exc:
        log.debug("importing %s failed", module_name, exc_info=exc)
        raise HookError(
            f"importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
