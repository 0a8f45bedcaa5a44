"""Errors: a malformed config is refused at once, whole, and in words.

Each defect the issue names is put, alone, into a config that is otherwise
good (a UNIX socket, a TCP socket on a free port, a worker):

- ``juggler CONFIG`` exits 2 within a second with one
  ``FILE:LINE: [section] key: reason`` line per problem, and has spawned
  nothing and bound nothing (no socket file, the port still free);
- the same defect written over the file of a live juggler and applied
  with ``juggler reloadconfig`` is rejected whole: the command fails with
  that line, and the same processes serve the same sockets.

Two defects are warnings by design (DESIGN.md: "an unknown key is a
warning that names where it stands"): an unknown key and an unknown
section. Their figures show the warning and that juggler runs.

An unknown ``--backend`` is caught when the config is read if the command
runs this installation's runner. Behind a wrapper juggler cannot see
through, the runner refuses it at once with exit 3 (a backend missing:
cannot boot), on which the watcher rests at the first death instead of
respawning in a loop, however slowly the runner boots.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import harness
import psutil
import pytest
from control_support import ask, free_port
from harness import SupervisorProcess, wait_for

GOOD = """[circus]
include = extra.ini

[socket:web]
path = {{tmp}}/web.sock

[socket:tcp]
host = 127.0.0.1
port = {port}

[watcher:web]
cmd = runner serve --fd $(circus.sockets.web) inherit_probe:app
args = --python-path {{apps}}
copy_env = true
spare_processes = 0
"""
EXTRA = "[env]\nSTAGE = test\n"


@dataclass(frozen=True)
class Defect:
    """A change to GOOD, and where the message must point: the last line
    that starts with ``marker``, in ``[section]``, naming ``key``."""

    edit: Callable[[str], str]
    marker: str
    section: str
    key: str = ""
    warning: bool = False  # by design, not an error
    extra: str = EXTRA  # the included file's text ("": unreadable)


def add_to(section: str, line: str) -> Callable[[str], str]:
    def edit(config: str) -> str:
        return config.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)

    return edit


def append(text: str) -> Callable[[str], str]:
    return lambda config: config + text


DEFECTS = {
    "unknown_key": Defect(add_to("watcher:web", "nosuchkey = 1"), "nosuchkey",
                          "watcher:web", "nosuchkey", warning=True),
    "unknown_section": Defect(append("\n[nosuch]\nkey = 1\n"), "[nosuch]",
                              "nosuch", warning=True),
    "bad_int": Defect(add_to("watcher:web", "numprocesses = two"), "numprocesses",
                      "watcher:web", "numprocesses"),
    "bad_bool": Defect(add_to("watcher:web", "respawn = sometimes"), "respawn",
                       "watcher:web", "respawn"),
    "bad_octal": Defect(add_to("socket:web", "umask = 089"), "umask", "socket:web",
                        "umask"),
    "duplicate_section": Defect(append("\n[watcher:web]\ncmd = sleep 60\n"),
                                "[watcher:web]", "watcher:web"),
    "missing_cmd": Defect(append("\n[watcher:nocmd]\nnumprocesses = 1\n"),
                          "[watcher:nocmd]", "watcher:nocmd", "cmd"),
    "unknown_socket": Defect(
        append("\n[watcher:other]\ncmd = sleep 60 $(circus.sockets.nosuch)\n"),
        "cmd = sleep 60", "watcher:other", "cmd"),
    "bad_port": Defect(lambda c: re.sub(r"port = \d+", "port = 70000", c), "port",
                       "socket:tcp", "port"),
    "unreadable_include": Defect(lambda c: c, "include", "circus", "include",
                                 extra=""),
    "unknown_backend": Defect(
        lambda c: c.replace("runner serve ", "runner serve --backend nosuch ", 1),
        "cmd = runner", "watcher:web", "cmd"),
}  # fmt: skip


@pytest.fixture
def without_dac_override(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """juggler as root, but held to file modes: without CAP_DAC_OVERRIDE
    and CAP_DAC_READ_SEARCH a file of mode 000 is unreadable, as it is to
    any user. (As plain root, nothing is.)"""
    setpriv = "/usr/bin/setpriv"
    if not os.access(setpriv, os.X_OK):
        pytest.fail("this scenario needs util-linux's setpriv")
    command = harness.juggler_command()
    held = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *command]
    monkeypatch.setattr(harness, "juggler_command", lambda: held)
    yield


class Stack:
    """A config in a folder of its own: the main file and its include."""

    def __init__(self, defect: Defect | None) -> None:
        self.port = free_port()
        self.sup = SupervisorProcess("")
        self.write(defect)

    def write(self, defect: Defect | None) -> None:
        """Write the config with ``defect`` (None: the good one)."""
        config = GOOD.format(port=self.port)
        self.sup.write_config(defect.edit(config) if defect else config)
        extra = os.path.join(self.sup.tmp, "extra.ini")
        with open(extra, "w") as f:
            f.write(defect.extra if defect else EXTRA)
        os.chmod(extra, 0o000 if defect and not defect.extra else 0o644)

    def stop(self) -> None:
        self.sup.stop()


def names_its_place(message: str, stack: Stack, defect: Defect) -> bool:
    """``FILE:LINE: [section] key: reason`` (a key a section lacks is named
    after the section: ``[watcher:w]: cmd: missing``)."""
    path = stack.sup.config_path
    with open(path) as f:
        lines = f.read().splitlines()
    line = max(n for n, text in enumerate(lines, 1) if text.startswith(defect.marker))
    prefix = f"{path}:{line}: [{defect.section}]"
    if not message.startswith(prefix):
        return False
    rest = message[len(prefix) :]
    if not defect.key:
        return rest.startswith(": ") and len(rest) > 2
    return bool(re.match(rf":? {re.escape(defect.key)}: \S", rest))


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def living_in_session(pid: int) -> list[int]:
    """Processes (zombies aside) left in juggler's session."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == pid and proc.info["status"] != "zombie":
                found.append(proc.pid)
        except ProcessLookupError:
            continue
    return found


def lines_of(text: str, prefix: str) -> list[str]:
    return [
        line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)
    ]


@pytest.mark.usefixtures("without_dac_override")
@pytest.mark.parametrize("name", DEFECTS)
def test_malformed_config_exits_2_naming_its_place(
    name: str, figures, cleanup: list[object]
) -> None:
    defect = DEFECTS[name]
    stack = Stack(defect)
    cleanup.append(stack)
    sup = stack.sup
    if defect.warning:
        sup.start()
        warnings = [w for w in lines_of(sup.log(), "") if "WARNING" in w]
        placed = [w for w in warnings if names_its_place(w.split("config: ", 1)[-1],
                                                          stack, defect)]  # fmt: skip
        figures.exact(
            f"{name}: a warning naming FILE:LINE: [section] key:",
            placed[0].split("config: ", 1)[-1] if placed else warnings,
            len(placed) == 1,
        )
        figures.note(
            f"{name}: exit 2 (the issue) or a warning (DESIGN.md)",
            "a warning; juggler runs (the design's choice)",
        )
        return

    started = time.monotonic()
    sup.start(wait=None)
    code = sup.wait(timeout=10)
    elapsed = time.monotonic() - started
    errors = lines_of(sup.log(), "error: ")
    figures.exact(
        f"{name}: exit code, and one line naming FILE:LINE: [section] key:",
        f"exit {code}: {' | '.join(errors)}",
        code == 2 and len(errors) == 1 and names_its_place(errors[0], stack, defect),
    )
    figures.timing(f"{name}: exited within", elapsed * 1000, 1000)
    nothing = (
        "spawned:" not in sup.log()
        and not living_in_session(sup.pid)
        and not os.path.exists(f"{sup.tmp}/web.sock")
        and not os.path.exists(f"{sup.tmp}/control.sock")
        and port_is_free(stack.port)
    )
    figures.exact(
        f"{name}: nothing spawned, no socket file, port {stack.port} still free",
        nothing,
        nothing,
    )


def snapshot(sup: SupervisorProcess) -> tuple[object, ...]:
    """What must not change: processes, sockets (by descriptor and where
    they listen), the UNIX socket's file, the watchers."""
    path = sup.endpoint.removeprefix("unix://")
    return (
        sorted(sup.children()),
        *(ask(path, command)["result"] for command in ("listsockets", "list")),
        os.stat(f"{sup.tmp}/web.sock").st_ino,
        sup.serving(),
    )


@pytest.mark.usefixtures("without_dac_override")
def test_the_same_configs_on_a_live_reloadconfig_change_nothing(
    figures, cleanup: list[object]
) -> None:
    stack = Stack(None)
    cleanup.append(stack)
    sup = stack.sup
    sup.start()
    sup.wait_log("ready: web[1]")
    before = snapshot(sup)
    for name, defect in DEFECTS.items():
        stack.write(defect)
        done = sup.ctl("reloadconfig")
        after = snapshot(sup)
        errors = lines_of(done.stderr, "error: ")
        if defect.warning:
            outcome = f"accepted with a warning, exit {done.returncode}"
            ok = done.returncode == 0
        else:
            outcome = f"exit {done.returncode}: {' | '.join(errors)}"
            ok = (
                done.returncode != 0
                and len(errors) == 1
                and names_its_place(errors[0].removeprefix("reload rejected: "),
                                    stack, defect)
            )  # fmt: skip
        figures.exact(f"reloadconfig with {name}: rejected whole", outcome, ok)
        figures.exact(
            f"reloadconfig with {name}: same pids, sockets, watchers",
            "unchanged" if after == before else f"{before} -> {after}",
            after == before,
        )
        stack.write(None)
    assert sup.ctl("reloadconfig").returncode == 0  # the good file still applies


WRAPPED_BACKEND = """
[socket:web]
path = {tmp}/web.sock

[watcher:web]
# juggler does not see through a shell: the runner is the one to refuse.
shell = true
cmd = exec runner serve --backend nosuch --fd $(circus.sockets.web)
args = --python-path {apps} inherit_probe:app
copy_env = true
numprocesses = 2
"""
WATCH_SECONDS = 5.0


def test_an_unknown_backend_behind_a_wrapper_does_not_respawn_in_a_loop(
    figures, cleanup: list[object]
) -> None:
    sup = SupervisorProcess(WRAPPED_BACKEND)
    cleanup.append(sup)
    sup.start()
    started = time.monotonic()
    wait_for(lambda: sup.ctl_json("status", "web")["state"] == "flapping")
    resting = time.monotonic() - started
    time.sleep(max(0.0, WATCH_SECONDS - resting))  # the scenario: watch it rest
    log = sup.log()
    codes = set(re.findall(r"exited: web\[\d+\] pid=\d+ status=(\d+)", log))
    spawns = log.count("spawned: web[")
    figures.exact(
        "runner's exit code (3: cannot boot) and words for an unknown backend",
        f"exit {', '.join(sorted(codes))}: {lines_of(log, 'error: ')[:1]}",
        codes == {"3"} and 'unknown backend "nosuch"' in log,
    )
    figures.exact(
        f"spawns in {WATCH_SECONDS:g} s of a watcher of 2 (none respawned)",
        spawns,
        spawns <= 2,
    )
    figures.note("watcher flapping (resting) after", f"{resting * 1000:.0f} ms")
