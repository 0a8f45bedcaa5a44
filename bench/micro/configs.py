"""A generated Circus configuration of many watchers, for the parse
benchmark: what a large real stack writes, in Circus's own keys."""

from __future__ import annotations

SOCKETS = 10


def circus_ini(watchers: int, tmp: str) -> str:
    """``watchers`` watchers over ten UNIX sockets, each with its own env
    section, output file and the substitutions juggler resolves."""
    parts = [f"[circus]\nendpoint = ipc://{tmp}/control.sock\nwarmup_delay = 0\n"]
    for n in range(SOCKETS):
        parts.append(f"[socket:web{n}]\npath = {tmp}/web{n}.sock\numask = 007\n")
    for n in range(watchers):
        parts.append(_watcher(n, tmp))
    return "\n".join(parts)


def _watcher(n: int, tmp: str) -> str:
    socket = f"web{n % SOCKETS}"
    return (
        f"[watcher:app{n}]\n"
        f"cmd = runner serve --fd $(circus.sockets.{socket}) --backend wsgiref "
        f"--name app{n}-$(circus.wid) app{n}:application\n"
        "use_sockets = true\n"
        f"numprocesses = {1 + n % 4}\n"
        "copy_env = true\n"
        "graceful_timeout = 10\n"
        "max_age = 3600\n"
        "max_age_variance = 300\n"
        f"priority = {n % 5}\n"
        "stdout_stream.class = FileStream\n"
        f"stdout_stream.filename = {tmp}/app{n}.log\n"
        f"\n[env:app{n}]\n"
        f"APP_NAME = app{n}\n"
        "APP_HOME = $(circus.env.HOME)\n"
        "LANG = C.UTF-8\n"
    )
