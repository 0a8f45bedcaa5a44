"""Sockets and privileges: what a worker holds, and who it is.

- A worker holds, beyond 0, 1 and 2, exactly the sockets of its watcher
  (and a spare its standby pipe): nothing of another watcher, of the
  control socket, of an output pipe or a log file. What else it holds it
  made itself after exec (the runner's self-pipes and epoll). A grandchild
  the app starts, even with ``close_fds=False``, holds only 0, 1 and 2, and
  its environment carries nothing addressed to the supervisor: systemd's
  NOTIFY_SOCKET and WATCHDOG_*, LISTEN_*, JUGGLER_TOKEN, nor the worker's
  own NOTIFY_SOCKET and JUGGLER_STANDBY_FD (the runner removes those).
- A UNIX listener has the mode its octal ``umask`` says, and the
  supervisor's owner, from the first ``lstat`` that sees it; a stale socket
  file is replaced; a live one is refused.
- A process with ``uid`` set has the target's ids in all four places (real,
  effective, saved, filesystem), the target's groups and no capability;
  when the drop cannot happen, the process is not started.

Every process is real; identities and descriptors are read from /proc.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import harness
import psutil
import pytest
from harness import SupervisorProcess, bind_unix, http_get, wait_for

if TYPE_CHECKING:
    from reliability.conftest import Figures

Started = Callable[..., SupervisorProcess]

# What the supervisor's own environment may hold that no worker, and no
# program a worker starts, may see (the runner's own two included).
ADDRESSED_TO_SUPERVISOR = {
    "NOTIFY_SOCKET": "",  # filled in with the test's datagram socket
    "WATCHDOG_USEC": "30000000",
    "WATCHDOG_PID": "1",
    "LISTEN_FDS": "1",
    "LISTEN_PID": "1",
    "LISTEN_FDNAMES": "web",
    "JUGGLER_TOKEN": "a-control-token-no-worker-may-read",
}
FORBIDDEN_IN_GRANDCHILD = {*ADDRESSED_TO_SUPERVISOR, "JUGGLER_STANDBY_FD"}

TWO_WATCHERS = """
[socket:a]
path = {tmp}/a.sock

[socket:b]
host = 127.0.0.1
port = 0

[watcher:a]
cmd = runner serve --fd $(circus.sockets.a) --python-path {apps} inherit_probe:app
numprocesses = 2
copy_env = true
stdout_stream.class = FileStream
stdout_stream.filename = {tmp}/a.out

[watcher:b]
cmd = runner serve --fd $(circus.sockets.b) --python-path {apps} inherit_probe:app
copy_env = true

# A runner that is not asked for READY=1: before juggler left systemd's
# NOTIFY_SOCKET out of copy_env, it announced itself there.
[watcher:c]
cmd = runner serve --fd $(circus.sockets.b) --python-path {apps} inherit_probe:app
copy_env = true
ready = none
spare_processes = 0
"""
SOCKET_OF = {"a": "a", "b": "b", "c": "b"}


class Closer:
    """A socket of the test's, closed at teardown by ``cleanup``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def stop(self) -> None:
        self.sock.close()


class Killer:
    """Pids to SIGKILL at teardown (grandchildren that outlive a stop)."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def stop(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- reading /proc -----------------------------------------------------------


def fd_table(pid: int) -> dict[int, str]:
    """Descriptor -> what it is (``socket:[N]``, ``pipe:[N]``, a path)."""
    table = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            table[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return table


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = f.read().split(b"\0")
    pairs = (item.decode().split("=", 1) for item in items if b"=" in item)
    return dict(pairs)  # type: ignore[arg-type]


def runs(pid: int, program: str) -> bool:
    """Whether ``pid`` has exec()ed ``program`` yet."""
    return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == program


def status_of(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as f:
        fields = (line.split(":", 1) for line in f if ":" in line)
        return {key: value.split() for key, value in fields}


# -- 1. descriptors and environment -------------------------------------------


def describe(fds: dict[int, str], names: dict[str, str]) -> str:
    """``6=socket a, 19=standby pipe``: objects named as the test knows them."""
    return ", ".join(f"{fd}={names.get(target, target)}" for fd, target in fds.items())


def all_ready(sup: SupervisorProcess, count: int) -> bool:
    processes = [p for w in sup.status().values() for p in w["processes"]]
    return len(processes) == count and all(p["ready"] for p in processes)


def check_worker(
    figures: Figures,
    sup_table: dict[int, str],
    watcher: str,
    process: dict[str, Any],
    own: set[int],
) -> None:
    """The worker's descriptors past 2: shared with juggler, exactly its own
    sockets (and a spare's standby pipe); the rest of its own making."""
    pid = process["pid"]
    table = fd_table(pid)
    held = set(sup_table.values())
    expected = {fd: sup_table[fd] for fd in own}
    names = {sup_table[fd]: "its socket" for fd in own}
    if process["spare"]:
        standby = int(environ_of(pid)["JUGGLER_STANDBY_FD"])
        expected[standby] = table.get(standby, "closed")
        names[expected[standby]] = "its standby pipe"
    # An anonymous inode has no identity of its own to compare (every epoll
    # reads "anon_inode:[eventpoll]"): it is judged by its kind below.
    shared = {
        fd: t
        for fd, t in table.items()
        if fd > 2 and t in held and not t.startswith("anon_inode:")
    }
    who = f"{watcher}[{process['wid']}]" + (" (spare)" if process["spare"] else "")
    figures.exact(
        f"{who}: descriptors past 2 shared with juggler are exactly its own",
        describe(shared, names) or "none",
        shared == expected,
    )
    made = {fd: t for fd, t in table.items() if fd > 2 and fd not in shared}
    strays = {fd: t for fd, t in made.items() if not t.startswith(PRIVATE_KINDS)}
    figures.exact(
        f"{who}: its other descriptors are pipes and polls of its own, "
        "no socket nor file",
        f"{len(made)} own, strays: {describe(strays, {}) or 'none'}",
        not strays,
    )


# What a process makes for itself: a pipe juggler does not hold (checked
# above), an epoll or an event counter. A pidfd (juggler holds one per
# child) or any socket or file would have come from outside.
PRIVATE_KINDS = (
    "pipe:",
    "anon_inode:[eventpoll]",
    "anon_inode:[eventfd]",
    "anon_inode:[signalfd]",
    "anon_inode:[timerfd]",
)


def test_worker_descriptors_are_stdio_and_own_sockets(
    juggler: Started, figures, cleanup: list[object], tmp_path
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    cleanup.append(Closer(notify))  # closed last, after juggler stops
    notify.bind(str(tmp_path / "systemd-notify"))
    notify.setblocking(False)
    env = {**ADDRESSED_TO_SUPERVISOR, "NOTIFY_SOCKET": str(tmp_path / "systemd-notify")}
    sup = juggler(TWO_WATCHERS, env=env)
    killer = Killer()
    cleanup.append(killer)
    # a: 2 + a spare, b: 1 + a spare, c: 1.
    wait_for(lambda: all_ready(sup, 6), message="every process ready")
    [c_pid] = sup.serving("c")
    sup.wait_log(f"[{c_pid}] INFO juggler.runner: serving:")  # ready = none

    sup_table = fd_table(sup.pid)
    fds = {s["name"]: s["fd"] for s in sup.ctl_json("listsockets")}
    for watcher, state in sup.status().items():
        for process in state["processes"]:
            own = {fds[SOCKET_OF[watcher]]}
            check_worker(figures, sup_table, watcher, process, own)

    stdio = fd_table(sup.serving("a")[0])
    figures.note(
        "a worker's 0, 1, 2",
        f"0={stdio[0]}, 1=its stdout_stream pipe, 2=juggler's own stderr",
    )
    grandchild_inherits_nothing(sup, figures, killer)
    stray = []
    with contextlib.suppress(BlockingIOError):
        while True:
            stray.append(notify.recv(4096))
    figures.exact(
        "datagrams from workers on the supervisor's own NOTIFY_SOCKET",
        len(stray),
        not stray,
    )
    notify.close()


def grandchild_inherits_nothing(
    sup: SupervisorProcess, figures: Figures, killer: Killer
) -> None:
    """A ``close_fds=False`` grandchild of a worker of each socket family."""
    location = {s["name"]: s["location"] for s in sup.ctl_json("listsockets")}
    host, port = location["b"].rsplit(":", 1)
    for name, address in (("a", f"{sup.tmp}/a.sock"), ("b", (host, int(port)))):
        status, body = http_get(address, "/spawn")
        assert status == 200, body
        pid = int(body)
        killer.pids.append(pid)
        wait_for(partial(runs, pid, "sleep"), message="the grandchild's exec")
        table = fd_table(pid)
        figures.exact(
            f"grandchild of a worker of {name} (close_fds=False): descriptors",
            sorted(table),
            sorted(table) == [0, 1, 2],
        )
        env = environ_of(pid)
        leaked = sorted(FORBIDDEN_IN_GRANDCHILD & set(env))
        figures.exact(
            f"grandchild of a worker of {name}: supervisor or runner variables "
            "in its environment",
            leaked or "none",
            not leaked,
        )
    figures.note(
        "JUGGLER_ENDPOINT in a copy_env grandchild (an address, not a secret)",
        "present" if "JUGGLER_ENDPOINT" in env else "absent",
    )


# -- 2. UNIX listener mode and owner ------------------------------------------

MODES = """
[socket:tight]
path = {tmp}/tight.sock
umask = 077

[socket:circus]
path = {tmp}/circus.sock
umask = 22

[socket:default]
path = {tmp}/default.sock

[watcher:web]
cmd = runner serve --fd $(circus.sockets.default) --python-path {apps}
args = inherit_probe:app
copy_env = true
spare_processes = 0
"""
# path name: (umask as the config writes it, the mode it must give)
EXPECTED_MODES = {
    "tight": ("077", 0o700),
    "circus": ("22, as Circus configs write it", 0o755),
    "default": ("unset: 117", 0o660),
}


class ModeWatch:
    """lstat()s paths in a tight loop, keeping every mode seen."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths
        self.seen: dict[str, set[int]] = {name: set() for name in paths}
        self.owners: dict[str, set[tuple[int, int]]] = {n: set() for n in paths}
        self.looks = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            for name, path in self.paths.items():
                try:
                    info = os.lstat(path)
                except FileNotFoundError:
                    continue
                self.seen[name].add(stat.S_IMODE(info.st_mode))
                self.owners[name].add((info.st_uid, info.st_gid))
            self.looks += 1

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def octal(modes: set[int]) -> str:
    return ", ".join(f"{m:04o}" for m in sorted(modes)) or "never seen"


def test_unix_listener_mode_is_exact_from_the_first_instant(
    figures, cleanup: list[object]
) -> None:
    sup = SupervisorProcess(MODES)
    cleanup.append(sup)
    paths = {name: f"{sup.tmp}/{name}.sock" for name in EXPECTED_MODES}
    watch = ModeWatch(paths)
    watch.start()
    try:
        sup.start()
        assert http_get(paths["default"])[0] == 200
    finally:
        watch.stop()
    me = (os.getuid(), os.getgid())
    for name, (umask, mode) in EXPECTED_MODES.items():
        widest = 0
        for seen in watch.seen[name]:
            widest |= seen
        figures.exact(
            f"{name}.sock, umask {umask}: every mode seen while juggler "
            f"started (expected {mode:04o})",
            octal(watch.seen[name]),
            watch.seen[name] == {mode} and widest == mode,
        )
        figures.exact(
            f"{name}.sock: owner (juggler's own uid:gid)",
            ", ".join(f"{u}:{g}" for u, g in watch.owners[name]),
            watch.owners[name] == {me},
        )
    figures.note("lstat rounds while juggler started", f"{watch.looks:,}")


def test_stale_socket_file_is_replaced_live_one_refused(
    figures, cleanup: list[object]
) -> None:
    config = "[socket:web]\npath = {tmp}/web.sock\n" + WEB_WATCHER
    stale = SupervisorProcess(config)
    cleanup.append(stale)
    path = f"{stale.tmp}/web.sock"
    bind_unix(path).close()  # the file stays; nobody listens any more
    before = connect_error(path)
    stale.start()
    # (An inode number proves nothing here: the filesystem reuses it.)
    figures.exact(
        "stale socket file: replaced, and served",
        f"before: {before}; after: GET {http_get(path)[0]}",
        before == "ECONNREFUSED" and http_get(path)[0] == 200,
    )

    live = SupervisorProcess(config)
    cleanup.append(live)
    path = f"{live.tmp}/web.sock"
    holder = bind_unix(path)
    cleanup.append(Closing(holder))
    inode = os.lstat(path).st_ino
    started = time.monotonic()
    live.start(wait=None)
    code = live.wait(timeout=10)
    elapsed = time.monotonic() - started
    errors = [line for line in live.log().splitlines() if line.startswith("error:")]
    untouched = os.lstat(path).st_ino == inode and still_accepts(holder, path)
    figures.exact(
        "live socket file: refused with one line, the holder untouched",
        f"exit {code}, {errors}",
        code != 0
        and len(errors) == 1
        and "in use by a live server" in errors[0]
        and untouched
        and "spawned:" not in live.log(),
    )
    figures.timing("live socket file: refused within", elapsed * 1000, 1000)


WEB_WATCHER = """
[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) --python-path {apps} inherit_probe:app
copy_env = true
spare_processes = 0
"""


def connect_error(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        try:
            client.connect(path)
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))
    return "connected"


class Closing:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def stop(self) -> None:
        self.sock.close()


def still_accepts(holder: socket.socket, path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        holder.settimeout(5)
        conn, _ = holder.accept()
        conn.close()
    return True


# -- 3. dropping privileges ---------------------------------------------------


def target_user() -> pwd.struct_passwd:
    """A system user with a supplementary group, so that "its own groups"
    means more than its primary one; nobody if there is none."""
    members = {
        user: group.gr_gid
        for group in grp.getgrall()
        for user in group.gr_mem
        if user != "root"
    }
    for entry in pwd.getpwall():
        if entry.pw_name in members and entry.pw_uid not in (0, os.getuid()):
            return entry
    return pwd.getpwnam("nobody")


def own_groups(user: pwd.struct_passwd, gid: int) -> set[int]:
    """What initgroups(user, gid) gives: gid and the groups naming user."""
    return {gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}


needs_root = pytest.mark.skipif(os.getuid() != 0, reason="dropping needs root")


@needs_root
def test_dropped_process_has_only_the_target_identity(juggler: Started, figures):
    user = target_user()
    nogroup = grp.getgrnam("nogroup").gr_gid
    sup = juggler(
        f"""
[watcher:primary]
cmd = sleep 60
uid = {user.pw_name}
ready = none

[watcher:explicit_gid]
cmd = sleep 60
uid = {user.pw_name}
gid = nogroup
ready = none
"""
    )
    cases = {"primary": user.pw_gid, "explicit_gid": nogroup}
    wait_for(lambda: all(sup.serving(name) for name in cases))
    for name, gid in cases.items():
        [pid] = sup.serving(name)
        wait_for(partial(runs, pid, "sleep"), message=f"{name}'s exec")
        status = status_of(pid)
        uid_ok = status["Uid"] == [str(user.pw_uid)] * 4
        gid_ok = status["Gid"] == [str(gid)] * 4
        figures.exact(
            f"{name}: real, effective, saved, fs uid and gid "
            f"(target {user.pw_uid}/{gid})",
            f"Uid {' '.join(status['Uid'])}; Gid {' '.join(status['Gid'])}",
            uid_ok and gid_ok,
        )
        groups = {int(g) for g in status["Groups"]}
        figures.exact(
            f"{name}: groups are {user.pw_name}'s own",
            sorted(groups),
            groups == own_groups(user, gid),
        )
        caps = {k: int(status[k][0], 16) for k in CAPS}
        figures.exact(
            f"{name}: capabilities left ({', '.join(CAPS)})",
            ", ".join(f"{k}={v:x}" for k, v in caps.items()),
            not any(caps.values()),
        )
    figures.note(
        "CapBnd of a dropped process (left as the system set it)",
        status["CapBnd"][0],
    )


CAPS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


def nothing_started(sup: SupervisorProcess, program: str = "sleep") -> bool:
    """No line of a spawn, and no ``program`` (even a zombie) in juggler's
    session. (juggler's own helpers may linger there as zombies: this
    container's pid 1 reaps nothing.)"""
    started = [
        p.pid
        for p in psutil.process_iter(["name"])
        if p.info["name"] == program and _session(p.pid) == sup.pid
    ]
    return "spawned:" not in sup.log() and not started


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


@pytest.fixture
def without_setuid_caps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """juggler started as root but without CAP_SETUID/CAP_SETGID, as in a
    container that drops them (setpriv empties them from its bounding set)."""
    setpriv = "/usr/bin/setpriv"
    if not os.access(setpriv, os.X_OK):
        pytest.fail("this scenario needs util-linux's setpriv")
    command = harness.juggler_command()
    dropped = [setpriv, "--bounding-set", "-setuid,-setgid", *command]
    monkeypatch.setattr(harness, "juggler_command", lambda: dropped)
    yield


FAILED_DROPS = {
    "unknown_user": "uid = no-such-user-here",
    "unknown_group": "uid = nobody\ngid = no-such-group-here",
    "gid_the_kernel_reads_as_unchanged": "uid = nobody\ngid = 4294967295",
    "no_setuid_capability": "uid = nobody",
}


@needs_root
@pytest.mark.parametrize("case", FAILED_DROPS)
def test_a_failed_drop_starts_nothing(
    case: str, figures, cleanup: list[object], request
) -> None:
    if case == "no_setuid_capability":
        request.getfixturevalue("without_setuid_caps")
    sup = SupervisorProcess(
        "[socket:web]\npath = {tmp}/web.sock\n\n"
        f"[watcher:w]\ncmd = sleep 60\nready = none\n{FAILED_DROPS[case]}\n"
    )
    cleanup.append(sup)
    started = time.monotonic()
    sup.start(wait=None)
    code = sup.wait(timeout=10)
    elapsed = time.monotonic() - started
    errors = [line for line in sup.log().splitlines() if line.startswith("error:")]
    figures.exact(
        f"{case}: juggler refuses, in one line",
        f"exit {code}: {' | '.join(errors)}",
        code != 0 and len(errors) == 1,
    )
    figures.exact("no process started", nothing_started(sup), nothing_started(sup))
    figures.timing("refused within", elapsed * 1000, 1000)
