"""Every error names FILE:LINE: [section] key: and says what was expected.

In process; tests/supervisor/test_config_cli.py drives a few of these
through the real ``juggler --check``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from juggler.supervisor.config import ConfigError, load

WEB = "[watcher:web]\ncmd = sleep 1\n"

# (config text, line, "[section] key", reason); the line is 1-based.
CASES = [
    (WEB + "numprocesses = many\n", 3, "[watcher:web] numprocesses",
     "expected an integer, got 'many'"),
    (WEB + "numprocesses = 2.5\n", 3, "[watcher:web] numprocesses",
     "expected an integer, got '2.5'"),
    (WEB + "numprocesses = -1\n", 3, "[watcher:web] numprocesses",
     "expected 0 or more, got '-1'"),
    (WEB + "copy_env = maybe\n", 3, "[watcher:web] copy_env",
     "expected a boolean (true/false, yes/no, on/off, 1/0), got 'maybe'"),
    (WEB + "umask = 089\n", 3, "[watcher:web] umask",
     "expected an octal number such as 022, got '089'"),
    (WEB + "graceful_timeout = soon\n", 3, "[watcher:web] graceful_timeout",
     "expected a number of seconds, got 'soon'"),
    (WEB + "stop_signal = SIGNOPE\n", 3, "[watcher:web] stop_signal",
     "expected a signal name or number, got 'SIGNOPE'"),
    (WEB + "rlimit_bananas = 3\n", 3, "[watcher:web] rlimit_bananas",
     "no resource limit RLIMIT_BANANAS on this system"),
    (WEB + "ready = maybe\n", 3, "[watcher:web] ready",
     "expected one of notify, warmup, none, got 'maybe'"),
    (WEB + "singleton = true\nnumprocesses = 2\n", 4, "[watcher:web] numprocesses",
     "a singleton runs at most 1 process"),
    (WEB + "copy_path = true\n", 3, "[watcher:web] copy_path",
     "needs copy_env = true (as in Circus)"),
    (WEB + "hooks.before_start = not a name\n", 3, "[watcher:web] hooks.before_start",
     "expected module.function[, true|false], got 'not a name'"),
    (WEB + "hooks.before_start = a.b, perhaps\n", 3,
     "[watcher:web] hooks.before_start", "expected a boolean"),
    (WEB + "stdout_stream.class = NoSuchStream\n", 3,
     "[watcher:web] stdout_stream.class", "unknown stream class 'NoSuchStream'"),
    (WEB + "stdout_stream.max_bytes = 10\n", 3, "[watcher:web] stdout_stream.max_bytes",
     "stdout_stream needs a class or a filename"),
    (WEB + "stdout_stream.class = FileStream\n", 3,
     "[watcher:web] stdout_stream.class", "FileStream needs a filename"),
    (WEB + "stderr_stream.class = TimedRotatingFileStream\n"
     "stderr_stream.filename = x.log\nstderr_stream.rotate_when = fortnight\n", 5,
     "[watcher:web] stderr_stream.rotate_when",
     "expected S, M, H, D, W0-W6 or midnight, got 'fortnight'"),
    ("[watcher:web]\nnumprocesses = 2\n", 1, "[watcher:web]",
     "cmd: missing (the command to run)"),
    ("[watcher:web]\ncmd = x --fd $(circus.sockets.api)\n", 2, "[watcher:web] cmd",
     "$(circus.sockets.api): no [socket:api] section (sockets: none)"),
    ("[watcher:web]\ncmd = x $(circus.numprocesses)\n", 2, "[watcher:web] cmd",
     "$(circus.numprocesses): unknown name (juggler knows $(circus.wid), "
     "$(circus.sockets.NAME), $(circus.env.VAR))"),
    ("[watcher:web]\ncmd = x $(circus.env.NOPE_NOT_SET)\n", 2, "[watcher:web] cmd",
     "$(circus.env.NOPE_NOT_SET): NOPE_NOT_SET is not set in the environment "
     "nor in an [env] section"),
    ("[socket:s]\nport = 70000\n", 2, "[socket:s] port",
     "expected a port from 0 to 65535, got '70000'"),
    ("[socket:s]\nport = http\n", 2, "[socket:s] port",
     "expected an integer, got 'http'"),
    ("[socket:s]\nfamily = AF_UNIX\n", 2, "[socket:s] family", "AF_UNIX needs a path"),
    ("[socket:s]\nfamily = AF_BLUETOOTH\n", 2, "[socket:s] family",
     "expected an address family (AF_INET, AF_INET6, AF_UNIX), got 'AF_BLUETOOTH'"),
    ("[socket:s]\ntype = SOCK_DGRAM\n", 2, "[socket:s] type",
     "juggler binds SOCK_STREAM sockets only"),
    ("[socket:s]\npath = /tmp/s.sock\numask = 8a\n", 3, "[socket:s] umask",
     "expected an octal number such as 022, got '8a'"),
    ("[socket:s]\nport = 1\n\n[socket:S]\nport = 2\n", 4, "[socket:S]",
     "a second socket named s (names ignore case)"),
    ("[circus]\numask = nine\n", 2, "[circus] umask", "expected an octal number"),
    ("[circus]\nloglevel = loud\n", 2, "[circus] loglevel",
     "expected one of debug, info, warning, error, critical, got 'loud'"),
    ("[plugin:p]\nretry_in = 3\n", 1, "[plugin:p]", "use: missing (the plugin class)"),
    (WEB + "\n[watcher:web]\ncmd = other\n", 4, "[watcher:web]",
     "duplicate section (first at line 1)"),
    (WEB + "CMD = again\n", 3, "[watcher:web] CMD", "duplicate key (first at line 2)"),
    ("[watcher:]\ncmd = x\n", 1, "[watcher:]",
     "a watcher needs a name: [watcher:NAME]"),
    ("[env:]\nA = 1\n", 1, "[env:]", "no watcher name or pattern after env:"),
]  # fmt: skip


def write(tmp_path: Path, text: str, name: str = "c.ini") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        load(str(path), environ={"PATH": "/bin"}, log_warnings=False)
    return caught.value.errors


@pytest.mark.parametrize(("text", "line", "where", "reason"), CASES)
def test_error_names_file_line_section_key(
    tmp_path: Path, text: str, line: int, where: str, reason: str
) -> None:
    path = write(tmp_path, text)
    errors = errors_of(path)
    assert errors[0].startswith(f"{path}:{line}: {where}: {reason}"), errors


def test_lines_that_are_not_ini(tmp_path: Path) -> None:
    path = write(tmp_path, "cmd = x\n[watcher:w]\ncmd = x\njust words\n")
    assert errors_of(path) == (
        f"{path}:1: a key before any [section]",
        f"{path}:4: [watcher:w]: expected key = value, got 'just words'",
    )


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[watcher:a]\ncmd = x\nnumprocesses = x\n"
        "[watcher:b]\ncmd = y\nrespawn = sometimes\n"
        "[socket:c]\nport = -1\n",
    )
    assert errors_of(path) == (
        f"{path}:8: [socket:c] port: expected a port from 0 to 65535, got '-1'",
        f"{path}:3: [watcher:a] numprocesses: expected an integer, got 'x'",
        f"{path}:6: [watcher:b] respawn: expected a boolean (true/false, "
        "yes/no, on/off, 1/0), got 'sometimes'",
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.ini"
    assert errors_of(path) == (
        f"{path}: cannot read the configuration: No such file or directory",
    )


def test_missing_plain_include_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[circus]\ninclude = other.ini\n")
    assert errors_of(path) == (
        f"{path}:2: [circus] include: cannot read {tmp_path}/other.ini: no such file",
    )


def test_unreadable_include_is_an_error(tmp_path: Path) -> None:
    # A folder matched by the glob cannot be read as a file (this holds even
    # for root, unlike a chmod 000 file).
    (tmp_path / "sub.ini").mkdir()
    path = write(tmp_path, "[circus]\ninclude = *.ini\n")
    errors = errors_of(path)
    assert errors[0].startswith(
        f"{path}:2: [circus] include: cannot read {tmp_path}/sub.ini: "
    )


def test_error_in_included_file_names_that_file(tmp_path: Path) -> None:
    write(tmp_path, "[watcher:w]\ncmd = x\npriority = high\n", "conf.d/w.ini")
    path = write(tmp_path, "[circus]\ninclude_dir = conf.d\n")
    assert errors_of(path) == (
        f"{tmp_path}/conf.d/w.ini:3: [watcher:w] priority: "
        "expected an integer, got 'high'",
    )


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_bytes(b"[watcher:w]\ncmd = caf\xe9\n")
    assert errors_of(path)[0].startswith(f"{path}: cannot read the configuration: ")
