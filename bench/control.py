"""What each supervisor says about its workers, and how it is told to reload.

juggler is asked over its control channel (the product's own client
library, about a millisecond a call, so it can be polled). It keeps a
*spare* per runner watcher: a booted runner that waits on a standby pipe
and is promoted the moment a serving worker dies. A spare is a child of
the supervisor but serves nothing, so the restart and reload measures look
at the serving workers only. gunicorn and circus keep no spares: their
children are their serving workers, and they tell nothing of readiness.

A reload is what an operator would type: ``juggler reload web`` (graceful:
each new process is ready before an old one is told to stop; the command
returns when it is done), SIGHUP to gunicorn's master (it returns at once;
the master starts new workers and stops the old ones gracefully), and
``circusctl reload web --waiting``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

import psutil

from bench import children
from bench.stacks import Stack, StackError
from juggler.supervisor.client import Client
from juggler.supervisor.endpoint import parse
from juggler.supervisor.errors import SupervisorError

WATCHER = "web"
RELOAD_TIMEOUT = 120.0

# What each supervisor does when a serving worker is SIGKILLed.
RESTART_MECHANISM = {
    "juggler": "promotes its booted spare (sent one byte on its standby "
    "pipe), then boots a new spare",
    "juggler-no-spare": "execs a new runner (no spare is configured)",
    "gunicorn": "forks a new worker from its master (the app is imported "
    "in the worker, after the fork)",
    "circus": "notices the death on its next poll (check_delay = 5 s), then "
    "execs a new chaussette",
}


@dataclass(frozen=True)
class Worker:
    """One child of a supervisor, as the supervisor knows it."""

    pid: int
    ready: bool = True
    spare: bool = False


def alive_or_raise(stack: Stack) -> int:
    """The supervisor's pid; StackError once it is gone (gunicorn's
    master, for one, can die of a worker's death)."""
    if stack.proc is None:
        raise StackError(f"{stack.config} is not running")
    if stack.proc.poll() is not None:
        detail = children.log_tail(stack.log_path)
        raise StackError(f"{stack.config} exited {stack.proc.returncode}: {detail}")
    return stack.proc.pid


def workers(stack: Stack) -> list[Worker]:
    """Every child of the supervisor, spares marked."""
    pid = alive_or_raise(stack)
    if stack.config != "juggler":
        return [Worker(p.pid) for p in children.children(pid)]
    status = _call(stack, "status", name=WATCHER)
    return [
        Worker(int(p["pid"]), ready=bool(p["ready"]), spare=bool(p["spare"]))
        for p in status["processes"]
    ]


def serving(stack: Stack) -> list[Worker]:
    return [w for w in workers(stack) if not w.spare]


def expected_spares(stack: Stack) -> int:
    """How many spares the supervisor keeps (only juggler keeps any)."""
    if stack.config != "juggler":
        return 0
    options = _call(stack, "get", name=WATCHER, keys=["spare_processes"])
    return int(options["spare_processes"])


def settled(stack: Stack, spares: int) -> bool:
    """Every serving worker is back and ready, and so are the spares."""
    found = workers(stack)
    up = [w for w in found if not w.spare and w.ready]
    waiting = [w for w in found if w.spare and w.ready]
    return len(up) >= stack.workers and len(waiting) >= spares


def restart_mechanism(config: str, spares: int) -> str:
    if config == "juggler" and spares == 0:
        return RESTART_MECHANISM["juggler-no-spare"]
    return RESTART_MECHANISM.get(config, "")


def _call(stack: Stack, command: str, **args: Any) -> Any:
    try:
        with Client(parse(stack.ctx.endpoint), timeout=10.0) as client:
            return client.call(command, **args)
    except (SupervisorError, OSError) as exc:
        raise StackError(f"juggler {command}: {exc}") from None


# -- reloading ------------------------------------------------------------------


def reload_command(stack: Stack) -> list[str]:
    """The operator's command line for a graceful reload ([] for a signal)."""
    ctx = stack.ctx
    if stack.config == "juggler":
        return [ctx.script("juggler"), "--endpoint", ctx.endpoint, "reload", WATCHER]
    if stack.config == "circus":
        endpoint = f"ipc://{ctx.tmp}/circus-control"
        return [
            ctx.script("circusctl"),
            "--endpoint",
            endpoint,
            "--timeout",
            str(int(RELOAD_TIMEOUT)),
            "reload",
            WATCHER,
            "--waiting",
        ]
    if stack.config == "gunicorn":
        return []
    raise StackError(f"{stack.config} has no reload")


def reload(stack: Stack) -> None:
    """Start a graceful reload (and, where the command waits, finish it)."""
    pid = alive_or_raise(stack)
    args = reload_command(stack)
    if not args:
        os.kill(pid, signal.SIGHUP)
        return
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=RELOAD_TIMEOUT,
            env=stack.ctx.env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StackError(f"{args[0]} reload took over {RELOAD_TIMEOUT:g}s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"exit {done.returncode}"
        raise StackError(f"reload failed: {detail}")


def oldest(found: list[Worker]) -> psutil.Process:
    """The worker that has run longest (psutil checks the pid is the same
    process when it is later signalled)."""
    processes = [psutil.Process(w.pid) for w in found]
    return min(processes, key=lambda p: p.create_time())
