"""The configuration as values: frozen dataclasses, one field per option.

This module is the option table. Each field that an INI key sets carries an
``Opt`` in its annotation: the key's value kind and a help line. The reader
(``config_build``), ``juggler --check`` and the docs all come from it, so an
option is added in one place. Defaults are Circus's unless the help says
otherwise.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any


@dataclass(frozen=True)
class Opt:
    """How an INI key is read: its value kind and its help line.

    ``key`` is the INI spelling when it differs from the field name (a
    prefix family like ``rlimit_*``); such fields are read by hand.
    """

    kind: str
    help: str
    key: str | None = None


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class StreamConfig:
    """Where a watcher's stdout or stderr goes (``stdout_stream.*``)."""

    kind: Annotated[
        str,
        Opt(
            "str",
            "file, watched_file, timed_rotating_file, stdout, fancy_stdout or "
            "custom (from stdout_stream.class; a filename alone means file)",
            key="class",
        ),
    ]
    cls: Annotated[str, Opt("str", "the class as written", key="class")] = ""
    filename: Annotated[str | None, Opt("str", "the file written to")] = None
    max_bytes: Annotated[
        int, Opt("int", "rotate when the file reaches this size; 0: never")
    ] = 0
    backup_count: Annotated[int, Opt("int", "rotated files kept")] = 0
    time_format: Annotated[
        str | None, Opt("str", "strftime prefix of each line; none by default")
    ] = None
    rotate_when: Annotated[
        str | None, Opt("str", "S, M, H, D, W0-W6 or midnight (timed rotation)")
    ] = None
    rotate_interval: Annotated[int, Opt("int", "rotate every N rotate_when")] = 1
    utc: Annotated[bool, Opt("bool", "timed rotation in UTC")] = False
    color: Annotated[str | None, Opt("str", "fancy_stdout's colour")] = None
    options: Annotated[
        Mapping[str, str],
        Opt("raw", "every other key, for a custom class's constructor", key="*"),
    ] = field(default_factory=_empty)


@dataclass(frozen=True)
class HookConfig:
    """``hooks.NAME = module.function[, ignore_failure]``."""

    name: str
    target: str
    ignore_failure: bool


@dataclass(frozen=True)
class FlappingConfig:
    """When to give up on a watcher whose processes keep dying at once.

    Circus did this in its ``circus.plugins.flapping.Flapping`` plugin, off
    unless configured; juggler applies it to every watcher by default (see
    ``flapping.py`` for how deaths are counted). A ``[plugin:...]`` section
    using Circus's plugin sets the defaults that a watcher overrides with
    ``flapping.KEY``; ``flapping.active = false`` or ``check_flapping =
    false`` turns it off.
    """

    enabled: Annotated[
        bool,
        Opt("bool", "apply the policy (juggler: on by default)", key="active"),
    ] = True
    attempts: Annotated[
        int, Opt("int", "deaths within window that count as flapping")
    ] = 2
    window: Annotated[float, Opt("duration", "seconds to count deaths in")] = 1.0
    retry_in: Annotated[
        float, Opt("duration", "seconds to wait before starting again")
    ] = 7.0
    max_retry: Annotated[
        int, Opt("int", "restarts after flapping before giving up; -1: always")
    ] = 5


@dataclass(frozen=True)
class SocketConfig:
    """A ``[socket:NAME]`` section: a listening socket the arbiter binds."""

    name: str
    host: Annotated[str, Opt("str", "address to bind")] = "localhost"
    port: Annotated[int, Opt("port", "TCP port; 0 picks a free one")] = 8080
    path: Annotated[
        str | None, Opt("str", "UNIX socket path; sets family = AF_UNIX")
    ] = None
    family: Annotated[int, Opt("family", "AF_INET, AF_INET6 or AF_UNIX")] = (
        socket.AF_INET
    )
    type: Annotated[
        int, Opt("socktype", "SOCK_STREAM, the only type juggler binds")
    ] = socket.SOCK_STREAM
    proto: Annotated[
        str | None, Opt("str", "protocol name; juggler uses the family's default")
    ] = None
    backlog: Annotated[int, Opt("int", "listen queue length")] = 2048
    so_reuseport: Annotated[bool, Opt("bool", "set SO_REUSEPORT")] = False
    umask: Annotated[
        int,
        Opt(
            "octal",
            "umask while binding a UNIX path, read as octal (Circus read it "
            "as decimal, 8 by default, which left the socket world-writable); "
            "juggler's default 117 gives rw-rw----: a proxy running as "
            "another user needs a shared group, or umask = 000",
        ),
    ] = 0o117
    replace: Annotated[
        bool, Opt("bool", "take over a UNIX path that a live server holds")
    ] = False
    blocking: Annotated[
        bool, Opt("bool", "leave the listening socket in blocking mode")
    ] = False
    interface: Annotated[
        str | None, Opt("str", "bind to this network device (SO_BINDTODEVICE)")
    ] = None
    fd: Annotated[
        int | None,
        Opt(
            "int",
            "juggler: adopt this inherited descriptor instead of binding "
            "(systemd socket activation passes them from 3 on)",
        ),
    ] = None


@dataclass(frozen=True)
class WatcherConfig:
    """A ``[watcher:NAME]`` section: a command and its N processes.

    ``cmd``, ``args``, ``shell_args`` and the values of ``env`` are
    templates: ``$(circus.wid)`` and ``$(circus.sockets.NAME)`` are filled in
    by ``substitute.render`` for each process. ``sockets`` is the set of
    socket names its processes inherit.
    """

    name: str
    cmd: Annotated[str, Opt("str", "the program and its arguments, split like a shell")]
    args: Annotated[str | None, Opt("str", "more arguments, after cmd")] = None
    numprocesses: Annotated[int, Opt("count", "processes to keep running")] = 1
    working_dir: Annotated[
        str | None, Opt("str", "the processes' directory; the arbiter's if unset")
    ] = None
    shell: Annotated[bool, Opt("bool", "run the command through /bin/sh")] = False
    shell_args: Annotated[
        str | None, Opt("str", "arguments to the shell when shell = true")
    ] = None
    executable: Annotated[
        str | None, Opt("str", "program to run; cmd's first word is then argv[0]")
    ] = None
    env: Annotated[
        Mapping[str, str],
        Opt("raw", "the processes' environment, from [env] and [env:NAME]"),
    ] = field(default_factory=_empty)
    copy_env: Annotated[
        bool, Opt("bool", "start from the arbiter's own environment")
    ] = False
    copy_path: Annotated[
        bool, Opt("bool", "set PYTHONPATH to the arbiter's sys.path (copy_env)")
    ] = False
    virtualenv: Annotated[
        str | None, Opt("str", "a virtualenv's root, put on PATH and PYTHONPATH")
    ] = None
    virtualenv_py_ver: Annotated[
        str | None, Opt("str", "the virtualenv's Python version, as 3.11")
    ] = None
    uid: Annotated[str | None, Opt("str", "user name or number to run as")] = None
    gid: Annotated[str | None, Opt("str", "group name or number to run as")] = None
    umask: Annotated[
        int | None, Opt("octal", "juggler: the processes' umask, octal")
    ] = None
    rlimits: Annotated[
        Mapping[str, int],
        Opt(
            "rlimit",
            "rlimit_NAME = N (e.g. rlimit_nofile); empty: unlimited",
            key="rlimit_*",
        ),
    ] = field(default_factory=_empty)
    warmup_delay: Annotated[
        float, Opt("duration", "seconds to wait after spawning each process")
    ] = 0.0
    graceful_timeout: Annotated[
        float, Opt("duration", "seconds between stop_signal and SIGKILL")
    ] = 30.0
    stop_signal: Annotated[
        int, Opt("signal", "signal that asks a process to stop: name or number")
    ] = signal.SIGTERM
    stop_children: Annotated[
        bool, Opt("bool", "send stop_signal to the process group")
    ] = False
    send_hup: Annotated[
        bool, Opt("bool", "reload by sending SIGHUP instead of restarting")
    ] = False
    respawn: Annotated[bool, Opt("bool", "respawn processes that exit")] = True
    autostart: Annotated[bool, Opt("bool", "start with the arbiter")] = True
    max_retry: Annotated[
        int, Opt("int", "failed spawns before giving up; -1: never give up")
    ] = 5
    priority: Annotated[int, Opt("int", "higher starts first and stops last")] = 0
    singleton: Annotated[bool, Opt("bool", "at most one process")] = False
    use_sockets: Annotated[
        bool, Opt("bool", "inherit every socket, not only those named in cmd")
    ] = False
    stdin_socket: Annotated[
        str | None, Opt("str", "a socket given to the processes as stdin")
    ] = None
    sockets: Annotated[
        frozenset[str],
        Opt(
            "raw",
            "sockets the processes inherit: all with use_sockets, else "
            "those that cmd, args and env name",
        ),
    ] = frozenset()
    max_age: Annotated[
        float, Opt("duration", "recycle a process after this many seconds; 0: off")
    ] = 0.0
    max_age_variance: Annotated[
        float, Opt("duration", "random extra seconds added to max_age")
    ] = 30.0
    close_child_stdin: Annotated[
        bool, Opt("bool", "give the processes /dev/null as stdin")
    ] = True
    close_child_stdout: Annotated[
        bool, Opt("bool", "send the processes' stdout to /dev/null")
    ] = False
    close_child_stderr: Annotated[
        bool, Opt("bool", "send the processes' stderr to /dev/null")
    ] = False
    check_flapping: Annotated[
        bool, Opt("bool", "apply the flapping policy to this watcher")
    ] = True
    hooks: Annotated[
        Mapping[str, HookConfig],
        Opt("raw", "hooks.NAME = module.function[, ignore_failure]", key="hooks.*"),
    ] = field(default_factory=_empty)
    stdout_stream: Annotated[
        StreamConfig | None,
        Opt("raw", "stdout_stream.KEY = value", key="stdout_stream.*"),
    ] = None
    stderr_stream: Annotated[
        StreamConfig | None,
        Opt("raw", "stderr_stream.KEY = value", key="stderr_stream.*"),
    ] = None
    flapping: Annotated[
        FlappingConfig,
        Opt("raw", "flapping.KEY overrides the flapping plugin", key="flapping.*"),
    ] = field(default_factory=FlappingConfig)
    ready: Annotated[
        str,
        Opt(
            "ready",
            "juggler: how a process is known to be up: notify (it sends "
            "READY=1 on NOTIFY_SOCKET), warmup (warmup_delay passed) or none; "
            "notify when cmd is a runner, else warmup",
        ),
    ] = "warmup"
    spare_processes: Annotated[
        int,
        Opt(
            "count",
            "juggler: processes kept booted but not serving, put to work the "
            "moment a serving one dies (runner only: it waits on "
            "JUGGLER_STANDBY_FD); 1 when cmd is a runner, else 0",
        ),
    ] = 0
    ready_timeout: Annotated[
        float, Opt("duration", "juggler: seconds to wait for READY=1")
    ] = 30.0


@dataclass(frozen=True)
class ArbiterConfig:
    """The whole configuration: the ``[circus]`` section and everything else."""

    path: str
    endpoint: Annotated[
        str | None,
        Opt(
            "str",
            "control channel: ipc://PATH or tcp://HOST:PORT; juggler's "
            "default is a UNIX socket of mode 0600",
        ),
    ] = None
    token_file: Annotated[
        str | None,
        Opt(
            "str",
            "juggler: file holding the token a tcp:// endpoint requires; it "
            "must not be readable by others; generated when unset",
        ),
    ] = None
    endpoint_owner: Annotated[
        str | None,
        Opt(
            "str",
            "user (name or uid) the ipc:// endpoint's file is given to; that "
            "user may then use it (needs root)",
        ),
    ] = None
    allowed_users: Annotated[
        frozenset[int],
        Opt(
            "raw",
            "juggler: users (names or uids, comma-separated) whose clients "
            "may use the UNIX endpoint besides juggler's own user and root",
        ),
    ] = frozenset()
    pidfile: Annotated[str | None, Opt("str", "file the arbiter's pid goes in")] = None
    loglevel: Annotated[
        str | None, Opt("loglevel", "debug, info, warning, error or critical")
    ] = None
    logoutput: Annotated[
        str | None, Opt("str", "log file; - for the console (stderr)")
    ] = None
    loggerconfig: Annotated[
        str | None, Opt("str", "a logging config file (.ini, .json, .yaml)")
    ] = None
    debug: Annotated[bool, Opt("bool", "log at debug level")] = False
    umask: Annotated[
        int | None, Opt("octal", "the arbiter's umask, octal; unchanged if unset")
    ] = None
    warmup_delay: Annotated[
        float, Opt("duration", "seconds between starting two watchers")
    ] = 0.0
    include: Annotated[
        str | None, Opt("str", "more config files (globs, relative to this file)")
    ] = None
    include_dir: Annotated[
        str | None, Opt("str", "folders whose *.ini files are included")
    ] = None
    env: Annotated[Mapping[str, str], Opt("raw", "the [env] section")] = field(
        default_factory=_empty
    )
    # By name, in name order (as Circus sorted them).
    sockets: Mapping[str, SocketConfig] = field(default_factory=_empty)
    watchers: Mapping[str, WatcherConfig] = field(default_factory=_empty)
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


# [circus] keys that Circus had and juggler does not implement: each is
# parsed, then warned about by name. The README's list is made from this.
UNSUPPORTED_CIRCUS_OPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "check_delay": "juggler has no polling interval (a child's exit is seen "
        "at once through its pidfd)",
        "pubsub_endpoint": "juggler has no ZeroMQ event channel (events go "
        "through the control socket)",
        "multicast_endpoint": "juggler has no multicast discovery",
        "stats_endpoint": "juggler has no separate stats daemon (see juggler stats)",
        "statsd": "juggler has no circusd-stats daemon",
        "statsd_close_outputs": "juggler has no circusd-stats daemon",
        "httpd": "juggler has no web console",
        "httpd_host": "juggler has no web console",
        "httpd_port": "juggler has no web console",
        "httpd_close_outputs": "juggler has no web console",
        "stream_backend": "juggler reads output on its own event loop",
        "debug_gc": "juggler has no garbage-collector debugging switch",
        "fqdn_prefix": "juggler has no cluster naming",
    }
)

# Watcher keys of Circus that juggler parses and does not act on.
UNSUPPORTED_WATCHER_OPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "on_demand": "juggler starts watchers at once, not on a first connection",
    }
)


def options_of(cls: type[Any]) -> dict[str, tuple[Opt, dataclasses.Field[Any]]]:
    """The INI-settable fields of a config class, keyed by field name."""
    hints = typing.get_type_hints(cls, include_extras=True)
    table: dict[str, tuple[Opt, dataclasses.Field[Any]]] = {}
    for f in dataclasses.fields(cls):
        meta = getattr(hints[f.name], "__metadata__", ())
        opts = [m for m in meta if isinstance(m, Opt)]
        if opts:
            table[f.name] = (opts[0], f)
    return table


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING
