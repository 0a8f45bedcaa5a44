"""From a watcher's config to the exact way one of its processes starts.

Everything that does not depend on the process is resolved once, when the
watcher is made: user and group names to ids, rlimit names to resources,
the descriptors of the sockets it inherits. ``spawn_spec_factory`` returns
the function that renders the per-process part -- ``$(circus.wid)`` and
``$(circus.sockets.NAME)`` in cmd, args and env -- for each wid.
"""

from __future__ import annotations

import grp
import logging
import pwd
import resource
import shlex
from collections.abc import Callable, Mapping

from juggler.supervisor.config_model import WatcherConfig
from juggler.supervisor.errors import SpawnError
from juggler.supervisor.process import SpawnSpec
from juggler.supervisor.sockets import BoundSocket
from juggler.supervisor.substitute import render

log = logging.getLogger("juggler.supervisor")


def spawn_spec_factory(
    config: WatcherConfig, sockets: Mapping[str, BoundSocket]
) -> Callable[[int], SpawnSpec]:
    """The function that gives the ``SpawnSpec`` of process ``wid``."""
    socket_fds = {name: sockets[name].fd for name in config.sockets}
    uid, gid = resolve_user(config)
    rlimits = resolve_rlimits(config)
    _warn_unimplemented(config)

    def spec_for(wid: int) -> SpawnSpec:
        def fill(template: str) -> str:
            return render(template, wid=wid, socket_fds=socket_fds)

        return SpawnSpec(
            argv=tuple(command_line(config, fill)),
            env={key: fill(value) for key, value in config.env.items()},
            executable=config.executable,
            cwd=config.working_dir,
            uid=uid,
            gid=gid,
            umask=config.umask,
            rlimits=rlimits,
            pass_fds=tuple(sorted(socket_fds.values())),
            stdout="devnull" if config.close_child_stdout else None,
            stderr="devnull" if config.close_child_stderr else None,
        )

    return spec_for


def command_line(config: WatcherConfig, fill: Callable[[str], str]) -> list[str]:
    """argv for one process: cmd and args split like a shell, or via sh -c."""
    cmd = fill(config.cmd)
    args = fill(config.args) if config.args else ""
    if config.shell:
        shell_args = shlex.split(fill(config.shell_args)) if config.shell_args else []
        return ["/bin/sh", *shell_args, "-c", f"{cmd} {args}".strip()]
    try:
        return shlex.split(cmd) + shlex.split(args)
    except ValueError as exc:
        raise SpawnError(f"{config.name}: cannot split cmd/args: {exc}") from None


def resolve_user(config: WatcherConfig) -> tuple[int | None, int | None]:
    """uid and gid as numbers; a uid alone brings the user's primary group."""
    uid = gid = None
    if config.uid is not None:
        try:
            entry = (
                pwd.getpwuid(int(config.uid))
                if config.uid.isdigit()
                else pwd.getpwnam(config.uid)
            )
        except KeyError:
            raise SpawnError(f"{config.name}: no user {config.uid!r}") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if config.gid is not None:
        if config.gid.isdigit():
            gid = int(config.gid)
        else:
            try:
                gid = grp.getgrnam(config.gid).gr_gid
            except KeyError:
                raise SpawnError(f"{config.name}: no group {config.gid!r}") from None
    return uid, gid


def resolve_rlimits(config: WatcherConfig) -> dict[int, tuple[int, int]]:
    """``rlimit_nofile = 4096`` -> {RLIMIT_NOFILE: (4096, 4096)}."""
    limits: dict[int, tuple[int, int]] = {}
    for name, value in config.rlimits.items():
        resource_id = getattr(resource, f"RLIMIT_{name.upper()}", None)
        if resource_id is None:
            raise SpawnError(f"{config.name}: no resource limit named {name!r}")
        limit = resource.RLIM_INFINITY if value < 0 else value
        limits[resource_id] = (limit, limit)
    return limits


def _warn_unimplemented(config: WatcherConfig) -> None:
    # Known shortcoming: output capture into streams and hooks are not wired
    # to the process layer yet. Until they are, a watcher's output goes to
    # the supervisor's own stdout/stderr (Circus's behaviour with no stream
    # configured) and hooks do not run. Wiring them needs a pipe per stream
    # read on the loop (process.py) and a hook runner in watcher.py.
    for stream in ("stdout_stream", "stderr_stream"):
        if getattr(config, stream) is not None:
            log.warning(
                "%s: %s is not implemented yet; output goes to juggler's own %s",
                config.name,
                stream,
                stream.split("_")[0],
            )
    if config.hooks:
        log.warning(
            "%s: hooks (%s) are not implemented yet and will not run",
            config.name,
            ", ".join(sorted(config.hooks)),
        )
