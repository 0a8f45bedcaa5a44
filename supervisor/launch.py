"""From a watcher's config to the exact way one of its processes starts.

Everything that does not depend on the process is resolved once, when the
watcher is made: user and group names to ids, rlimit names to resources,
the sockets it inherits, its hooks (``hooks.py``) and its output streams
(``streams.py``). ``spawn_spec_factory`` returns the ``Launcher`` that
renders the per-process part -- ``$(circus.wid)`` and
``$(circus.sockets.NAME)`` in cmd, args and env -- for each wid.

A watcher keeps the very socket objects it was made with, and their
descriptor numbers are read at each spawn: a reload that binds a socket
anew makes a new watcher for it, and a socket closed under a watcher fails
the spawn with its name instead of passing whatever now holds that number.

A hook that cannot be imported or a stream file that cannot be opened does
not fail the arbiter: it is logged as one line naming the watcher, and that
watcher refuses to start (``Hooks.problem``) while the others run.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import resource
import shlex
from collections.abc import Callable, Mapping

from juggler.supervisor.config_model import WatcherConfig
from juggler.supervisor.config_values import UNCHANGED_ID
from juggler.supervisor.errors import SpawnError
from juggler.supervisor.hooks import HookError, Hooks, search_path
from juggler.supervisor.process import SpawnSpec
from juggler.supervisor.sockets import BoundSocket
from juggler.supervisor.streams import OutputStream, StreamError, open_stream
from juggler.supervisor.substitute import render

log = logging.getLogger("juggler.supervisor")

# From linux/capability.h: what changing the groups and the uid takes.
CAP_SETGID = 6
CAP_SETUID = 7


class Launcher:
    """Renders a watcher's ``SpawnSpec`` per wid; owns its hooks and streams.

    Called as a function (``launcher(wid)``), so that a watcher can be
    given a plain function instead (and then has no hooks nor streams).
    """

    def __init__(
        self,
        spec_for: Callable[[int], SpawnSpec],
        hooks: Hooks,
        streams: Mapping[str, OutputStream] | None = None,
    ) -> None:
        self._spec_for = spec_for
        self.hooks = hooks
        self.streams = dict(streams or {})

    def __call__(self, wid: int) -> SpawnSpec:
        return self._spec_for(wid)

    async def close_streams(self) -> None:
        """Close the output files; a later write opens them again."""
        for stream in self.streams.values():
            await stream.close()


def launcher_of(spawn_spec: Callable[[int], SpawnSpec], name: str) -> Launcher:
    """``spawn_spec`` itself, or a launcher with no hooks around a function."""
    if isinstance(spawn_spec, Launcher):
        return spawn_spec
    return Launcher(spawn_spec, Hooks(name, {}))


def spawn_spec_factory(
    config: WatcherConfig, sockets: Mapping[str, BoundSocket]
) -> Launcher:
    """The launcher that gives the ``SpawnSpec`` of process ``wid``."""
    used = {name: sockets[name] for name in config.sockets}
    uid, gid = resolve_user(config)
    rlimits = resolve_rlimits(config)
    hooks, streams = _attachments(config, sockets)

    def spec_for(wid: int) -> SpawnSpec:
        socket_fds = descriptors(config.name, used)

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
            stdin=_stdin(config, socket_fds),
            stdout="devnull" if config.close_child_stdout else None,
            stderr="devnull" if config.close_child_stderr else None,
            stdout_sink=streams.get("stdout"),
            stderr_sink=streams.get("stderr"),
        )

    return Launcher(spec_for, hooks, streams)


def _stdin(config: WatcherConfig, socket_fds: Mapping[str, int]) -> str | int | None:
    """A socket (stdin_socket, for inetd-style programs), /dev/null
    (close_child_stdin, the default) or juggler's own stdin."""
    if config.stdin_socket is not None:
        return socket_fds[config.stdin_socket]
    return "devnull" if config.close_child_stdin else None


def descriptors(watcher: str, sockets: Mapping[str, BoundSocket]) -> dict[str, int]:
    """The sockets' descriptor numbers now; ``SpawnError`` if one is closed."""
    closed = sorted(name for name, bound in sockets.items() if bound.closed)
    if closed:
        raise SpawnError(f"{watcher}: socket {', '.join(closed)} is closed")
    return {name: bound.fd for name, bound in sockets.items()}


def _attachments(
    config: WatcherConfig, sockets: Mapping[str, BoundSocket]
) -> tuple[Hooks, dict[str, OutputStream]]:
    """The watcher's hooks and streams; a failure leaves ``hooks.problem``."""

    def locations() -> dict[str, str]:
        return {name: bound.location() for name, bound in sockets.items()}

    streams: dict[str, OutputStream] = {}
    try:
        hooks = Hooks.load(config, locations)
        streams = _open_streams(config)
    except (HookError, StreamError) as exc:
        hooks = Hooks(config.name, {}, locations)
        hooks.problem = str(exc)
        log.error("%s; the watcher will not start", exc)
    return hooks, streams


def _open_streams(config: WatcherConfig) -> dict[str, OutputStream]:
    streams = {}
    for name in ("stdout", "stderr"):
        stream = getattr(config, f"{name}_stream")
        if stream is None:
            continue
        if getattr(config, f"close_child_{name}"):
            log.warning(
                "%s: close_child_%s is set: %s_stream gets no output",
                config.name,
                name,
                name,
            )
            continue
        try:
            streams[name] = open_stream(
                config.name, name, stream, search_path(config.env)
            )
        except StreamError:
            for opened in streams.values():
                opened.stream.close()
            raise
    return streams


def command_line(config: WatcherConfig, fill: Callable[[str], str]) -> list[str]:
    """argv for one process: cmd and args split like a shell, or via sh -c."""
    cmd = fill(config.cmd)
    args = fill(config.args) if config.args else ""
    if config.shell:
        # As Circus (through Popen(shell=True)) does: shell_args come after
        # the command string, where the shell makes them $0, $1, ...
        shell_args = shlex.split(fill(config.shell_args)) if config.shell_args else []
        return ["/bin/sh", "-c", f"{cmd} {args}".strip(), *shell_args]
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
        except (KeyError, OverflowError):
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
    if gid is not None and gid >= UNCHANGED_ID:
        raise SpawnError(
            f"{config.name}: gid {gid} is not a group id (the kernel reads "
            f"{UNCHANGED_ID} as 'leave the group unchanged')"
        )
    _check_can_switch(config.name, uid, gid)
    return uid, gid


def _check_can_switch(name: str, uid: int | None, gid: int | None) -> None:
    """Refuse now, in words, what would fail in the child after the fork
    (where the cause is lost): setting the groups needs CAP_SETGID, even
    to our own; another uid needs CAP_SETUID."""
    missing = []
    if gid is not None and not _has_capability(CAP_SETGID):
        missing.append("CAP_SETGID")
    if uid is not None and uid != os.geteuid() and not _has_capability(CAP_SETUID):
        missing.append("CAP_SETUID")
    if missing:
        raise SpawnError(
            f"{name}: cannot run as uid={uid} gid={gid}: juggler (uid "
            f"{os.geteuid()}) lacks {' and '.join(missing)}, which switching "
            "takes; give it them (root has them unless they were dropped), "
            "or leave uid and gid out"
        )


def _has_capability(number: int) -> bool:
    """Whether this process holds capability ``number`` (capability.h)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> number & 1)
    return os.geteuid() == 0  # no /proc: assume root holds them all


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
