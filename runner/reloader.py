"""``--reload``: restart the worker when a source file changes (development).

The process started with ``--reload`` becomes a small parent: it holds the
listening socket and runs the real worker as a child (``runner serve --fd N``
with the same options), so the socket stays open across restarts and no
connection is refused while the code reloads. Every second it compares the
modification times of the ``.py`` files under the working directory and the
``--python-path`` folders; on a change it stops the child gracefully and
starts a new one. A child that fails to boot (a syntax error being fixed) is
restarted at the next change, not in a loop.

Known shortcoming: scanning mtimes costs a directory walk per second, fine
for a project tree but slow for a huge one; inotify would make it free, at
the price of a platform-specific dependency.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence

from juggler.backends.signals import StopRequest
from juggler.runner.errors import EXIT_OK
from juggler.runner.serve import Settings, open_listener, own_socket_file

log = logging.getLogger("juggler.runner")

POLL_INTERVAL = 1.0
SKIPPED_DIRS = {"__pycache__", "node_modules", "site-packages", "venv"}

# Options the parent consumes; the child gets ``--fd N`` instead.
_FLAGS_DROPPED = {"--reload", "--use-reloader"}
_OPTIONS_DROPPED = {"--fd", "--host", "--port", "--uds", "--backlog"}


def child_argv(argv: Sequence[str], fd: int) -> list[str]:
    """The parent's arguments, minus reloading and listening, plus --fd."""
    args = list(argv)
    if args and args[0] == "serve":
        args = args[1:]
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name in _FLAGS_DROPPED:
            continue
        if name in _OPTIONS_DROPPED:
            skip_value = "=" not in arg
            continue
        kept.append(arg)
    return ["serve", "--fd", str(fd), *kept]


def source_mtimes(roots: Sequence[str]) -> dict[str, float]:
    """Modification time of every .py file below ``roots``."""
    mtimes: dict[str, float] = {}
    for path in _python_files(roots):
        try:
            mtimes[path] = os.stat(path).st_mtime
        except OSError:
            continue  # removed while we walked
    return mtimes


def _python_files(roots: Sequence[str]) -> Iterator[str]:
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [
                d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS
            ]
            yield from (os.path.join(folder, f) for f in files if f.endswith(".py"))


def run_with_reloader(
    settings: Settings, argv: Sequence[str], stop: StopRequest
) -> int:
    """Hold the socket, run the worker as a child, restart it on changes.

    ``stop`` is the runner's, installed when ``main`` began; a stop asked
    before the first child starts means none is started.
    """
    sock = open_listener(settings)
    own_file = own_socket_file(settings)
    try:
        return _reload_until_stopped(settings, argv, stop, sock)
    finally:
        if own_file is not None:
            own_file.remove()


def _reload_until_stopped(
    settings: Settings, argv: Sequence[str], stop: StopRequest, sock: socket.socket
) -> int:
    sock.set_inheritable(True)
    roots = [os.getcwd(), *settings.python_path]
    command = [sys.executable, "-m", "juggler.runner", *child_argv(argv, sock.fileno())]
    log.info("reloader: watching %s for changes", ", ".join(roots))

    if stop.signum is not None:
        return EXIT_OK
    child = _spawn(command, sock.fileno())
    mtimes = source_mtimes(roots)
    while stop.wait(POLL_INTERVAL) is None:
        current = source_mtimes(roots)
        changed = sorted(
            p for p in current.keys() | mtimes.keys() if current.get(p) != mtimes.get(p)
        )
        mtimes = current
        if changed:
            log.info("reloader: %s changed, restarting pid=%d", changed[0], child.pid)
            _stop_child(child, settings.options.graceful_timeout)
            child = _spawn(command, sock.fileno())
    _stop_child(child, settings.options.graceful_timeout)
    return EXIT_OK


def _spawn(command: list[str], fd: int) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(command, pass_fds=(fd,))
    log.debug("reloader: started worker pid=%d", child.pid)
    return child


def _stop_child(child: subprocess.Popen[bytes], graceful_timeout: float) -> None:
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(graceful_timeout + 5)
    except subprocess.TimeoutExpired:
        log.warning("reloader: worker pid=%d ignored SIGTERM, killing it", child.pid)
        child.kill()
        child.wait()
