"""What juggler's config reader does beyond reading Circus's own files."""

from __future__ import annotations

import logging
import os
import socket
import textwrap
from pathlib import Path

import pytest

from juggler.supervisor.config import load, render
from juggler.supervisor.config_model import ArbiterConfig, WatcherConfig, options_of
from juggler.supervisor.substitute import SubstitutionError, socket_references

ENVIRON = {"PATH": "/usr/bin", "HOME": "/home/u", "PORT": "8000"}


def load_text(
    tmp_path: Path, text: str, environ: dict[str, str] | None = None
) -> ArbiterConfig:
    path = tmp_path / "c.ini"
    path.write_text(textwrap.dedent(text))
    return load(str(path), environ=ENVIRON if environ is None else environ,
                log_warnings=False)  # fmt: skip


def watcher(tmp_path: Path, body: str, extra: str = "") -> WatcherConfig:
    text = "[watcher:w]\n" + textwrap.dedent(body) + textwrap.dedent(extra)
    return load_text(tmp_path, text).watchers["w"]


# -- values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "value"),
    [("true", True), ("YES", True), ("On", True), ("1", True),
     ("false", False), ("no", False), ("OFF", False), ("0", False)],
)  # fmt: skip
def test_boolean_words(tmp_path: Path, word: str, value: bool) -> None:
    assert watcher(tmp_path, f"cmd = x\nrespawn = {word}\n").respawn is value


def test_keys_and_section_kinds_ignore_case(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[Watcher:Web]\nCMD = x\nNumProcesses = 5.0\n")
    assert config.watchers["Web"].numprocesses == 5  # name keeps its case


@pytest.mark.parametrize(
    ("text", "mask"), [("022", 0o22), ("0o027", 0o27), ("777", 0o777), ("0", 0)]
)
def test_umask_is_always_octal(tmp_path: Path, text: str, mask: int) -> None:
    config = load_text(
        tmp_path,
        f"[circus]\numask = {text}\n[socket:s]\npath = /tmp/s.sock\numask = {text}\n"
        f"[watcher:w]\ncmd = x\numask = {text}\n",
    )
    assert config.umask == config.sockets["s"].umask == mask
    assert config.watchers["w"].umask == mask


def test_stop_signal_forms(tmp_path: Path) -> None:
    for text, number in [("quit", 3), ("SIGINT", 2), ("15", 15), ("hup", 1)]:
        assert watcher(tmp_path, f"cmd = x\nstop_signal = {text}\n").stop_signal == (
            number
        )


def test_inline_comments_continuations_and_empty_quotes(tmp_path: Path) -> None:
    w = watcher(
        tmp_path,
        """\
        cmd = run ; a comment
        args = --one
          --two

          --three
        working_dir = ""
        shell_args = a;b ; not this
        """,
    )
    assert (w.cmd, w.args) == ("run", "--one\n--two\n--three")
    assert w.working_dir == ""
    assert w.shell_args == "a;b ; not this"  # Circus looks at the first ';'


def test_key_colon_value_and_rem_lines(tmp_path: Path) -> None:
    w = watcher(tmp_path, "rem a remark\ncmd: run\n# comment\n; comment\n")
    assert w.cmd == "run"


# -- warnings -----------------------------------------------------------------


def test_unknown_keys_and_sections_are_warnings_naming_the_place(
    tmp_path: Path,
) -> None:
    config = load_text(
        tmp_path,
        """\
        [circus]
        colour = blue
        httpd = true
        [watcher:w]
        cmd = x
        numprocess = 2
        on_demand = true
        hooks.before_lunch = a.b
        [socket:s]
        hots = x
        [plugin:stats]
        use = circus.plugins.statsd.StatsdEmitter
        [nonsense]
        a = 1
        [DEFAULT]
        b = 2
        [env:nobody]
        C = 3
        """,
    )
    path = tmp_path / "c.ini"
    assert sorted(config.warnings) == sorted([
        f"{path}:2: [circus] colour: unknown key for [circus] (ignored)",
        f"{path}:3: [circus] httpd: ignored: juggler has no web console (see README)",
        f"{path}:6: [watcher:w] numprocess: unknown key for a watcher (ignored)",
        f"{path}:7: [watcher:w] on_demand: ignored: juggler starts watchers at "
        "once, not on a first connection (see README)",
        f"{path}:8: [watcher:w] hooks.before_lunch: unknown hook (it is never "
        "called; hooks: after_reap, after_signal, after_spawn, after_start, "
        "after_stop, before_reap, before_signal, before_spawn, before_start, "
        "before_stop, extended_stats)",
        f"{path}:10: [socket:s] hots: unknown key for a socket (ignored)",
        f"{path}:12: [plugin:stats] use: ignored: plugin "
        "circus.plugins.statsd.StatsdEmitter (juggler runs no Circus plugins; "
        "see README)",
        f"{path}:13: [nonsense]: unknown section (ignored)",
        f"{path}:15: [DEFAULT]: ignored: juggler does not copy [DEFAULT] into "
        "other sections",
        f"{path}:17: [env:nobody]: matches no watcher",
    ])  # fmt: skip


def test_warnings_are_logged_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.ini"
    path.write_text("[watcher:w]\ncmd = x\nbogus = 1\n")
    with caplog.at_level(logging.WARNING, logger="juggler.supervisor"):
        config = load(str(path), environ={})
    assert caplog.messages == [f"config: {config.warnings[0]}"]
    assert "bogus: unknown key" in config.warnings[0]


def test_queue_stream_is_warned_and_dropped(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, "[watcher:w]\ncmd = x\nstdout_stream.class = QueueStream\n"
    )
    assert config.watchers["w"].stdout_stream is None
    assert "ignored: QueueStream" in config.warnings[0]


# -- streams and hooks --------------------------------------------------------


def test_stream_kinds(tmp_path: Path) -> None:
    w = watcher(
        tmp_path,
        """\
        cmd = x
        stdout_stream.class = circus.stream.TimedRotatingFileStream
        stdout_stream.filename = out.log
        stdout_stream.rotate_when = midnight
        stdout_stream.rotate_interval = 2
        stdout_stream.utc = true
        stdout_stream.backup_count = 3
        stderr_stream.class = my.streams.Custom
        stderr_stream.level = loud
        """,
    )
    out, err = w.stdout_stream, w.stderr_stream
    assert out is not None and err is not None
    assert (out.kind, out.filename, out.rotate_when) == (
        "timed_rotating_file", "out.log", "midnight",
    )  # fmt: skip
    assert (out.rotate_interval, out.utc, out.backup_count) == (2, True, 3)
    assert (err.kind, err.cls, dict(err.options)) == (
        "custom", "my.streams.Custom", {"level": "loud"},
    )  # fmt: skip


def test_filename_alone_is_a_file_stream(tmp_path: Path) -> None:
    w = watcher(tmp_path, "cmd = x\nstderr_stream.filename = e.log\n")
    assert w.stderr_stream is not None
    assert (w.stderr_stream.kind, w.stderr_stream.filename) == ("file", "e.log")


def test_hooks_with_and_without_flag(tmp_path: Path) -> None:
    w = watcher(
        tmp_path,
        "cmd = x\nhooks.before_start = my.hooks.check, true\n"
        "hooks.after_spawn = my.hooks:spawned\n",
    )
    start, spawn = w.hooks["before_start"], w.hooks["after_spawn"]
    assert (start.target, start.ignore_failure) == ("my.hooks.check", True)
    assert (spawn.target, spawn.ignore_failure) == ("my.hooks:spawned", False)


def test_check_flapping_false_turns_the_plugin_off(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "[plugin:f]\nuse = circus.plugins.flapping.Flapping\nattempts = 4\n"
        "[watcher:a]\ncmd = x\n[watcher:b]\ncmd = x\ncheck_flapping = false\n",
    )
    assert config.watchers["a"].flapping.enabled is True
    assert config.watchers["a"].flapping.attempts == 4
    assert config.watchers["b"].flapping.enabled is False


# -- environment --------------------------------------------------------------


def test_env_precedence_and_patterns(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """\
        [env]
        LEVEL = global
        ONLY = global
        [env:web*]
        LEVEL = pattern
        [env:web1,worker]
        LEVEL = list
        [env:*]
        STAR = yes
        [watcher:web1]
        cmd = x
        copy_env = true
        [watcher:web2]
        cmd = x
        [watcher:worker]
        cmd = x
        """,
    )
    web1, web2 = config.watchers["web1"].env, config.watchers["web2"].env
    worker = config.watchers["worker"].env
    assert (web1["LEVEL"], web2["LEVEL"], worker["LEVEL"]) == (
        "list",
        "pattern",
        "list",
    )
    assert web1["ONLY"] == web2["ONLY"] == worker["ONLY"] == "global"
    assert web1["STAR"] == worker["STAR"] == "yes"
    assert web1["HOME"] == "/home/u" and "HOME" not in web2  # copy_env
    assert dict(config.env) == {"LEVEL": "global", "ONLY": "global"}


def test_shell_style_variables_in_env_values(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """\
        [env:w]
        A = $HOME/bin:${PATH}
        B = $lowercase stays
        C = $UNSET_VAR!
        D = $(circus.env.port)
        [watcher:w]
        cmd = x
        """,
    )
    env = config.watchers["w"].env
    assert env["A"] == "/home/u/bin:/usr/bin"
    assert env["B"] == "$lowercase stays"
    assert env["C"] == "!"
    assert env["D"] == "8000"
    assert (
        "[env:w] C: $UNSET_VAR is not set; it expands to nothing"
        in (config.warnings[0])
    )


def test_circus_env_sees_env_sections_in_that_order(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """\
        [env]
        WHO = global
        ECHO = $(circus.env.port)
        [env:w]
        WHO = mine
        [watcher:w]
        cmd = $(CIRCUS.ENV.who) ((circus.env.PORT))
        args = $(circus.env.echo)
        [socket:s]
        port = $(circus.env.PORT)
        """,
    )
    assert config.watchers["w"].cmd == "mine 8000"
    assert config.watchers["w"].args == "8000"
    assert config.sockets["s"].port == 8000


def test_virtualenv_puts_bin_and_site_packages_on_the_paths(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.9" / "site-packages"
    (site / "extra").mkdir(parents=True)
    (venv / "bin").mkdir()
    (site / "x.pth").write_text("# c\nimport os\nextra\nmissing\n")
    w = watcher(
        tmp_path,
        f"cmd = x\ncopy_env = true\nvirtualenv = {venv}\nvirtualenv_py_ver = 3.9\n",
    )
    assert w.env["PATH"] == f"{venv}/bin:/usr/bin"
    assert w.env["PYTHONPATH"] == f"{site}/extra:{site}"


# -- substitutions and sockets ------------------------------------------------


def test_render_wid_and_sockets_in_any_case() -> None:
    template = "--fd $(circus.sockets.Web) --id ((CIRCUS.WID)) $(circus.wid)"
    assert render(template, wid=7, socket_fds={"WEB": 5}) == "--fd 5 --id 7 7"


def test_render_of_an_unbound_socket_is_a_caller_bug() -> None:
    with pytest.raises(KeyError):
        render("$(circus.sockets.api)", wid=1, socket_fds={})


def test_socket_references_checks_names() -> None:
    assert socket_references("a $(circus.sockets.B) ((circus.sockets.c))",
                             {"b": 1, "c": 2}) == {"b", "c"}  # fmt: skip
    with pytest.raises(SubstitutionError, match=r"no \[socket:d\]"):
        socket_references("$(circus.sockets.d)", {"b": 1})


def test_inherited_sockets(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """\
        [socket:a]
        port = 0
        [socket:b]
        path = /tmp/b.sock
        [socket:c]
        host = ::1
        family = AF_INET6
        port = 0
        [watcher:named]
        cmd = runner serve --fd $(circus.sockets.a) app:app
        [watcher:in_env]
        cmd = x
        [env:in_env]
        FD = $(circus.sockets.B)
        [watcher:all]
        cmd = x
        use_sockets = true
        [watcher:stdin]
        cmd = x
        stdin_socket = C
        [watcher:none]
        cmd = x
        """,
    )
    w = config.watchers
    assert w["named"].sockets == {"a"}
    assert w["in_env"].sockets == {"b"}
    assert w["in_env"].env["FD"] == "$(circus.sockets.B)"  # a template
    assert w["all"].sockets == {"a", "b", "c"}
    assert (w["stdin"].sockets, w["stdin"].stdin_socket) == ({"c"}, "c")
    assert w["none"].sockets == frozenset()
    assert config.sockets["c"].family == socket.AF_INET6
    assert config.sockets["b"].family == socket.AF_UNIX


def test_adopted_descriptor(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[socket:s]\nfd = 3\n")
    assert config.sockets["s"].fd == 3


# -- ready --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "ready"),
    [
        ("runner serve --fd $(circus.sockets.s) app:app", "notify"),
        ("/opt/venv/bin/runner --fd 3 app:app", "notify"),
        ("python -m juggler.runner serve app:app", "notify"),
        ("chaussette --fd $(circus.sockets.s) app:app", "warmup"),
        ("redis-server", "warmup"),
    ],
)
def test_ready_default_depends_on_the_command(
    tmp_path: Path, cmd: str, ready: str
) -> None:
    w = watcher(tmp_path, f"cmd = {cmd}\n", "[socket:s]\nport = 0\n")
    assert w.ready == ready


def test_ready_explicit(tmp_path: Path) -> None:
    w = watcher(tmp_path, "cmd = runner serve app:app\nready = none\nready_timeout = 5")
    assert (w.ready, w.ready_timeout) == ("none", 5.0)


# -- includes -----------------------------------------------------------------


def test_nested_includes_are_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.ini").write_text(
        "[circus]\ninclude = b/*.ini\n[watcher:one]\ncmd = x\n"
    )
    (tmp_path / "a" / "b" / "two.ini").write_text(
        "[circus]\ninclude = ../../main.ini\n[watcher:two]\ncmd = y\n"
    )
    main = tmp_path / "main.ini"
    main.write_text("[circus]\ninclude_dir = a\n[watcher:main]\ncmd = z\n")
    config = load(str(main), environ={}, log_warnings=False)
    assert list(config.watchers) == ["main", "one", "two"]
    # the cycle back to main.ini is read once
    assert [os.path.basename(f) for f in config.files] == [
        "main.ini", "one.ini", "two.ini",
    ]  # fmt: skip


# -- the option table ----------------------------------------------------------


def test_every_option_has_help_and_a_known_kind() -> None:
    from juggler.supervisor.config_model import SocketConfig, StreamConfig
    from juggler.supervisor.config_values import READERS

    for cls in (ArbiterConfig, WatcherConfig, SocketConfig, StreamConfig):
        for name, (opt, _) in options_of(cls).items():
            assert opt.help, name
            assert opt.kind in READERS or opt.kind in ("raw", "rlimit"), name
