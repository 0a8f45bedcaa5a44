"""The configurations behind nginx: how each is started, and when it is up.

A *stack* is one configuration serving the bench app on a socket, for one
backend: the bare parent (the limit), juggler + runner, gunicorn with the
matching worker, circus + chaussette. The command lines and config files
are built by small pure functions, so that the tests can read them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import children
from bench.probe import answers

CONFIGS = ("ceiling", "limit", "juggler", "gunicorn", "circus")
# Rows that are the product or the peers it must be measured against; the
# circus + chaussette rows are references "where they install", so their
# failures are recorded but do not fail the run.
REFERENCE_ONLY = {"circus"}
BOOT_TIMEOUT = 60.0

# gunicorn's worker for each runner backend. gthread gets the thread count
# of the runner backend it stands against (wsgiref 32, waitress 4).
GUNICORN_WORKER = {
    "wsgiref": ["-k", "gthread", "--threads", "32"],
    "waitress": ["-k", "gthread", "--threads", "4"],
    "gevent": ["-k", "gevent"],
    "meinheld": ["-k", "meinheld.gmeinheld.MeinheldWorker"],
    "uvicorn": ["-k", "uvicorn_worker.UvicornWorker"],
    # For the idle rows: gunicorn spawns nothing but its own workers, so
    # its "sleeping processes" are idle sync workers.
    "sync": ["-k", "sync"],
}


class StackError(Exception):
    """A configuration did not start; the message is the row's result."""


def app_for(backend: str) -> str:
    """The bench app whose 10 ms wait suits the backend's concurrency."""
    if backend == "uvicorn":
        return "bench.apps:asgi"
    if backend == "gevent":
        return "bench.apps:wsgi_gevent"
    return "bench.apps:wsgi"


@dataclass(frozen=True)
class Context:
    """Where things are: this venv's scripts, the repo, a private folder."""

    tmp: str
    root: str = str(Path(__file__).resolve().parent.parent)
    bindir: str = str(Path(sys.executable).parent)

    def script(self, name: str) -> str:
        path = os.path.join(self.bindir, name)
        if not os.path.exists(path):
            raise StackError(f"{name} is not installed: pip install -e '.[bench]'")
        return path

    @property
    def endpoint(self) -> str:
        """juggler's control channel: private to this stack's folder."""
        return f"unix://{self.tmp}/control.sock"

    def env(self) -> dict[str, str]:
        path = f"{self.bindir}:{os.environ.get('PATH', '')}"
        return {
            **os.environ,
            "PATH": path,
            "PYTHONPATH": self.root,
            "JUGGLER_ENDPOINT": self.endpoint,
        }


# -- command lines and config files ----------------------------------------


def runner_args(runner: str, backend: str, fd: str, root: str) -> list[str]:
    return [
        runner,
        "serve",
        "--fd",
        fd,
        "--backend",
        backend,
        "--python-path",
        root,
        app_for(backend),
    ]


def parent_args(
    python: str, workers: int, where: str, runner: str, *, backend: str, root: str
) -> list[str]:
    worker = runner_args(runner, backend, "{fd}", root)
    return [python, "-m", "bench.parent", str(workers), where, *worker]


def socket_section(upstream: str) -> str:
    if upstream.startswith("unix:"):
        return f"[socket:web]\npath = {upstream[5:]}\n"
    host, port = upstream.rsplit(":", 1)
    return f"[socket:web]\nhost = {host}\nport = {port}\n"


def juggler_ini(upstream: str, cmd: list[str], workers: int, ready: str) -> str:
    return (
        f"{socket_section(upstream)}\n"
        "[watcher:web]\n"
        f"cmd = {' '.join(cmd)}\n"
        f"numprocesses = {workers}\n"
        "copy_env = true\n"
        "graceful_timeout = 5\n"
        f"ready = {ready}\n"
    )


def circus_ini(tmp: str, upstream: str, cmd: list[str], workers: int) -> str:
    """circusd on private ipc endpoints (its defaults are fixed TCP ports),
    without its stats daemon, polling at its default check_delay of 5 s."""
    return (
        "[circus]\n"
        f"endpoint = ipc://{tmp}/circus-control\n"
        f"pubsub_endpoint = ipc://{tmp}/circus-pubsub\n"
        "check_delay = 5\n\n"
        f"{socket_section(upstream)}\n"
        "[watcher:web]\n"
        f"cmd = {' '.join(cmd)}\n"
        "use_sockets = true\n"
        f"numprocesses = {workers}\n"
        "copy_env = true\n"
        "graceful_timeout = 5\n"
        "stderr_stream.class = FileStream\n"
        f"stderr_stream.filename = {tmp}/workers.err\n"
    )


def gunicorn_args(
    gunicorn: str, backend: str, upstream: str, workers: int, root: str
) -> list[str]:
    """Keep-alive as long as the runner's (75 s, past nginx's 60 s), so that
    nginx never reuses an upstream connection gunicorn is closing."""
    if backend not in GUNICORN_WORKER:
        raise StackError(f"no gunicorn worker is paired with backend {backend}")
    return [
        gunicorn,
        "--workers",
        str(workers),
        *GUNICORN_WORKER[backend],
        "--bind",
        upstream,
        "--keep-alive",
        "75",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
        "--chdir",
        root,
        app_for(backend),
    ]


# -- running stacks -----------------------------------------------------------


@dataclass
class Stack:
    """One configuration serving the bench app (or sleeping) on a socket."""

    config: str
    ctx: Context
    backend: str
    upstream: str
    workers: int
    sleeping: bool = False
    command: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    # monotonic times of the supervisor's exec and of "all workers up".
    started_at: float = 0.0
    up_at: float = 0.0

    @property
    def log_path(self) -> str:
        return os.path.join(self.ctx.tmp, f"{self.config}.log")

    @property
    def address(self) -> str | tuple[str, int]:
        if self.upstream.startswith("unix:"):
            return self.upstream[5:]
        host, port = self.upstream.rsplit(":", 1)
        return (host, int(port))

    @property
    def supervisor_pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def prepare(self) -> None:
        """Write config files and set ``command``; StackError if impossible."""
        builder = _BUILDERS[self.config]
        self.command = builder(self)

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        self.prepare()
        if not self.command:
            return
        self.started_at = time.monotonic()
        self.proc = children.start(
            self.command, self.log_path, self.ctx.env(), cwd=self.ctx.tmp
        )
        try:
            children.wait_until(self._up, timeout, f"{self.config} ready")
        except TimeoutError as exc:
            raise StackError(f"{exc}: {self._failure_detail()}") from None
        self.up_at = time.monotonic()

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise StackError(
                f"{self.config} exited {self.proc.returncode}: {self._failure_detail()}"
            )
        if len(children.children(self.proc.pid)) < self.workers:
            return False
        return self.sleeping or answers(self.address)

    def _failure_detail(self) -> str:
        workers = children.log_tail(os.path.join(self.ctx.tmp, "workers.err"))
        return workers or children.log_tail(self.log_path) or "(no output)"

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        return sorted(p.pid for p in children.children(self.proc.pid))

    def files(self) -> dict[str, str]:
        """The config files this stack wrote, for the report."""
        found = {}
        for name in ("juggler.ini", "circus.ini"):
            path = os.path.join(self.ctx.tmp, name)
            if os.path.exists(path):
                with open(path) as f:
                    found[name] = f.read()
        return found

    def stop(self) -> None:
        if self.proc is not None:
            children.stop_tree(self.proc)
            self.proc = None


def _ceiling(stack: Stack) -> list[str]:
    return []


def _limit(stack: Stack) -> list[str]:
    ctx = stack.ctx
    runner = ctx.script("runner")
    return parent_args(
        sys.executable,
        stack.workers,
        stack.upstream,
        runner,
        backend=stack.backend,
        root=ctx.root,
    )


def _juggler(stack: Stack) -> list[str]:
    ctx = stack.ctx
    if stack.sleeping:
        cmd, ready = ["sleep", "1000000"], "none"
    else:
        fd = "$(circus.sockets.web)"
        cmd = runner_args(ctx.script("runner"), stack.backend, fd, ctx.root)
        ready = "notify"
    path = os.path.join(ctx.tmp, "juggler.ini")
    with open(path, "w") as f:
        f.write(juggler_ini(stack.upstream, cmd, stack.workers, ready))
    return [ctx.script("juggler"), path]


def _gunicorn(stack: Stack) -> list[str]:
    ctx = stack.ctx
    backend = "sync" if stack.sleeping else stack.backend
    return gunicorn_args(
        ctx.script("gunicorn"), backend, stack.upstream, stack.workers, ctx.root
    )


def _circus(stack: Stack) -> list[str]:
    ctx = stack.ctx
    if stack.sleeping:
        cmd = ["sleep", "1000000"]
    else:
        chaussette = ctx.script("chaussette")
        check_chaussette_backend(chaussette, stack.backend)
        cmd = [
            chaussette,
            "--fd",
            "$(circus.sockets.web)",
            "--backend",
            stack.backend,
            "--python-path",
            ctx.root,
            app_for(stack.backend),
        ]
    path = os.path.join(ctx.tmp, "circus.ini")
    with open(path, "w") as f:
        f.write(circus_ini(ctx.tmp, stack.upstream, cmd, stack.workers))
    return [ctx.script("circusd"), path]


def check_chaussette_backend(chaussette: str, backend: str) -> None:
    """chaussette rejects a backend it lacks while parsing its arguments;
    asking it first turns a respawn loop into the row's one-line cause."""
    done = subprocess.run(
        [chaussette, "--backend", backend, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise StackError(lines[-1] if lines else f"chaussette exited {done.returncode}")


_BUILDERS = {
    "ceiling": _ceiling,
    "limit": _limit,
    "juggler": _juggler,
    "gunicorn": _gunicorn,
    "circus": _circus,
}
