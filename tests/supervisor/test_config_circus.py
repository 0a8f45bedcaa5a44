"""Circus's own example and test configs load with the values Circus gave them.

The files are Circus's, copied unchanged into tests/configs/circus/. Where
juggler refuses one, the reason is asserted (and explained) below.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
from pathlib import Path

import pytest

from juggler.supervisor.config import ConfigError, load, render
from juggler.supervisor.config_model import (
    ArbiterConfig,
    FlappingConfig,
    SocketConfig,
    WatcherConfig,
)

CIRCUS = Path(__file__).resolve().parents[1] / "configs" / "circus"
ENVIRON = {"PATH": "/usr/bin:/bin", "HOME": "/home/test", "BAM": "1"}

# Files juggler refuses, and the reason each one's error must give.
REFUSED = {
    # Circus ran a watcher without cmd (and failed at spawn); a watcher
    # needs a command.
    "config/hooks.ini": "[watcher:foo]: cmd: missing",
    "config/find_hook_in_pythonpath.ini": "[watcher:foo]: cmd: missing",
    # args name a socket that the file never defines.
    "config/issue395.ini": "[watcher:web] args: $(circus.sockets.web): no [socket:web]",
    # GRAVITY is set by Circus's test before loading; see test_issue567.
    "config/issue567.ini": "[watcher:watcher1] cmd: $(circus.env.GRAVITY): GRAVITY "
    "is not set",
    # Circus refused this too, when it built the watcher.
    "config/virtualenv.ini": "[watcher:test] virtualenv: needs copy_env = true",
    # myvar is set by a before_spawn hook at run time; juggler resolves
    # $(circus.env.X) when it reads the file, so it must exist then.
    "examples/example10.ini": "[watcher:vars] cmd: $(circus.env.myvar): myvar is "
    "not set",
}


def circus(name: str, environ: dict[str, str] | None = None) -> ArbiterConfig:
    return load(str(CIRCUS / name), environ=environ or ENVIRON, log_warnings=False)


def warned(config: ArbiterConfig, *fragments: str) -> bool:
    return any(all(f in w for f in fragments) for w in config.warnings)


ALL_FILES = sorted(str(p.relative_to(CIRCUS)) for p in CIRCUS.rglob("*.ini"))


@pytest.mark.parametrize("name", ALL_FILES)
def test_every_circus_file_loads_or_is_refused_for_its_reason(name: str) -> None:
    if name in REFUSED:
        with pytest.raises(ConfigError) as caught:
            circus(name)
        assert REFUSED[name] in caught.value.errors[0]
        assert caught.value.errors[0].startswith(str(CIRCUS / name) + ":")
    else:
        assert isinstance(circus(name), ArbiterConfig)


def test_watcher_defaults_are_circus_defaults(tmp_path: Path) -> None:
    # Circus 0.19: config.watcher_defaults() and Watcher.__init__.
    path = tmp_path / "c.ini"
    path.write_text("[watcher:w]\ncmd = sleep 1\n")
    w = load(str(path), environ={}, log_warnings=False).watchers["w"]
    expected = {
        "args": None, "numprocesses": 1, "warmup_delay": 0, "executable": None,
        "working_dir": None, "shell": False, "shell_args": None, "uid": None,
        "gid": None, "send_hup": False, "stop_signal": signal.SIGTERM,
        "stop_children": False, "max_retry": 5, "graceful_timeout": 30,
        "priority": 0, "use_sockets": False, "singleton": False,
        "copy_env": False, "copy_path": False, "respawn": True,
        "autostart": True, "max_age": 0, "max_age_variance": 30,
        "virtualenv": None, "virtualenv_py_ver": None, "stdin_socket": None,
        "close_child_stdin": True, "close_child_stdout": False,
        "close_child_stderr": False, "check_flapping": True,
    }  # fmt: skip
    assert {k: getattr(w, k) for k in expected} == expected
    assert (dict(w.rlimits), dict(w.hooks), dict(w.env)) == ({}, {}, {})
    assert (w.stdout_stream, w.stderr_stream) == (None, None)
    assert w.sockets == frozenset()
    # juggler's own keys
    assert (w.ready, w.ready_timeout, w.umask) == ("warmup", 30.0, None)


def test_socket_defaults_are_circus_defaults_except_umask() -> None:
    # Circus 0.19: CircusSocket.load_from_config.
    s = SocketConfig(name="s")
    assert (s.host, s.port, s.family, s.type) == (
        "localhost", 8080, socket.AF_INET, socket.SOCK_STREAM,
    )  # fmt: skip
    assert (s.backlog, s.so_reuseport, s.replace, s.blocking) == (
        2048, False, False, False,
    )  # fmt: skip
    assert (s.interface, s.path, s.proto, s.fd) == (None, None, None, None)
    # Circus: int(umask) read as decimal, 8 by default (0o010: world-writable).
    assert s.umask == 0o117


def test_flapping_and_arbiter_defaults_are_circus_defaults() -> None:
    flapping = FlappingConfig()
    assert (flapping.attempts, flapping.window) == (2, 1.0)
    assert (flapping.retry_in, flapping.max_retry) == (7.0, 5)
    assert flapping.enabled is True  # juggler: on by default; Circus: plugin only
    arbiter = ArbiterConfig(path="x")
    assert (arbiter.warmup_delay, arbiter.debug, arbiter.umask) == (0.0, False, None)
    assert (arbiter.pidfile, arbiter.loglevel, arbiter.logoutput) == (None,) * 3
    # Circus's default was tcp://127.0.0.1:5555; juggler's is a UNIX socket.
    assert arbiter.endpoint is None


def test_example1_watchers_rlimits_flapping_plugin_and_warnings() -> None:
    config = circus("examples/example1.ini")
    assert list(config.watchers) == ["dummy", "dummy2"]
    dummy, dummy2 = config.watchers["dummy"], config.watchers["dummy2"]
    assert (dummy.cmd, dummy.args) == ("python", "-u dummy_fly.py $(circus.wid)")
    assert (dummy.numprocesses, dummy2.numprocesses) == (5, 3)
    assert dict(dummy2.rlimits) == {"nofile": 300, "nproc": 10}
    assert dummy.flapping == FlappingConfig(True, 2, 1.0, 3.0, 2)
    assert config.endpoint == "tcp://127.0.0.1:5555"
    assert config.debug is True
    for key in ("check_delay", "pubsub_endpoint", "stats_endpoint", "httpd"):
        assert warned(config, f"[circus] {key}: ignored: juggler has no")


def test_example2_file_stream_keeps_its_options_and_warns_refresh_time() -> None:
    config = circus("examples/example2.ini")
    stream = config.watchers["verbose"].stdout_stream
    assert stream is not None
    assert (stream.kind, stream.cls, stream.filename) == (
        "file",
        "FileStream",
        "test.log",
    )
    assert stream.time_format == "'%Y/%m/%d | %H:%M:%S'"
    assert config.watchers["verbose"].numprocesses == 10
    assert config.watchers["verbose2"].stdout_stream is None
    assert warned(
        config,
        "example2.ini:17: [watcher:verbose] stdout_stream.refresh_time: ignored",
    )


def test_example3_flapping_per_watcher_overrides_the_plugin() -> None:
    config = circus("examples/example3.ini")
    assert config.watchers["dying"].flapping.enabled is False
    assert config.watchers["dying2"].flapping == FlappingConfig(True, 2, 1.0, 1.0, 2)


def test_example4_old_wid_becomes_a_template_and_plugins_are_named() -> None:
    config = circus("examples/example4.ini")
    dummy = config.watchers["dummy"]
    assert dummy.args == "-u dummy_fly.py $(circus.wid)"
    assert render(dummy.args, wid=4, socket_fds={}) == "-u dummy_fly.py 4"
    assert warned(config, "[watcher:dummy] args: $WID is deprecated")
    assert warned(config, "plugin circus.plugins._statsd.StatsdEmitter")


def test_example5_socket_is_inherited_by_the_watcher_that_names_it() -> None:
    config = circus("examples/example5.ini")
    sock = config.sockets["webapp"]
    assert (sock.host, sock.port, sock.family) == ("127.0.0.1", 8888, socket.AF_INET)
    web = config.watchers["webworker"]
    assert web.sockets == frozenset({"webapp"})
    assert web.stdout_stream is not None and web.stdout_stream.kind == "stdout"
    line = render(web.cmd, wid=1, socket_fds={"WebApp": 7})
    assert line.startswith("../bin/chaussette --fd 7 --pre-hook")


def test_example6_singleton() -> None:
    assert circus("examples/example6.ini").watchers["swiss"].singleton is True


def test_example7_unix_socket_copy_env_and_copy_path() -> None:
    config = circus("examples/example7.ini")
    sock = config.sockets["webapp"]
    assert (sock.path, sock.family) == ("/tmp/webapp.sock", socket.AF_UNIX)
    env = config.watchers["webworker"].env
    assert env["BAM"] == "1"
    assert env["PYTHONPATH"] == os.pathsep.join(sys.path)


def test_max_age() -> None:
    dummy = circus("examples/max_age.ini").watchers["dummy"]
    assert (dummy.max_age, dummy.max_age_variance) == (10.0, 5.0)


def test_uwsgi_example_hooks_and_stop_signal() -> None:
    web = circus("examples/uwsgi_lossless_reload.ini").watchers["web"]
    assert web.stop_signal == signal.SIGQUIT
    hooks = web.hooks
    assert hooks["after_spawn"].target == (
        "examples.uwsgi_lossless_reload.children_started"
    )
    assert hooks["after_spawn"].ignore_failure is False
    # Circus never let before_signal or extended_stats failures stop anything.
    assert hooks["before_signal"].ignore_failure is True
    assert hooks["extended_stats"].ignore_failure is True
    line = render(web.cmd, wid=3, socket_fds={"web": 5})
    assert "--socket fd://5 --stats --stats 127.0.0.1:8093" in line


def test_env_sections_patterns_and_precedence() -> None:
    config = circus("config/env_section.ini")
    one, two = config.watchers["watcher1"].env, config.watchers["watcher2"].env
    assert one["CAKE"] == "lie" and "LIE" not in one
    assert two["LIE"] == "cake" and "CAKE" not in two
    for env in (one, two):
        assert env["PATH"] == "/usr/bin:/bin:/bin"
        assert (env["TEST1"], env["TEST2"], env["TEST3"]) == ("test1", "test2", "test3")
        assert "BAM" not in env  # no copy_env


def test_copy_env_only_where_asked() -> None:
    config = circus("config/copy_env.ini")
    assert "BAM" not in config.watchers["watcher1"].env
    assert config.watchers["watcher2"].env["BAM"] == "1"
    assert config.watchers["watcher1"].env["TEST1"] == "test1"


def test_env_keys_keep_their_case() -> None:
    env = circus("config/env_sensecase.ini").watchers["webapp"].env
    assert env["http_proxy"] == "http://localhost:8080"
    assert env["HTTPS_PROXY"] == "http://localhost:8043"
    assert env["FunKy_soUl"] == "scorpio"


def test_env_var_appends_to_the_supervisor_path() -> None:
    env = circus("config/env_var.ini").watchers["my_app"].env
    assert env["PATH"] == "/usr/bin:/bin:/bin"


def test_expand_vars_in_stream_options() -> None:
    stream = circus("config/expand_vars.ini").watchers["echo"].stdout_stream
    assert stream is not None
    assert (stream.filename, stream.max_bytes) == ("/tmp/echo.log", 10485760)


def test_variables_everywhere_issue442() -> None:
    environ = {**ENVIRON, "circus_stats_endpoint": "tcp://0.0.0.0:9876"}
    environ |= {"circus_statsd": "True", "circus_uid": "x", "circus_gid": "y"}
    config = circus("config/issue442.ini", environ)
    watcher = config.watchers["my_app"]
    assert (watcher.uid, watcher.gid) == ("tarek", "root")  # [env:] beats [env]
    assert warned(config, "[circus] statsd: ignored")


def test_env_everywhere() -> None:
    config = circus("config/env_everywhere.ini")
    assert config.endpoint == "tcp://127.0.0.1:1234"
    assert config.sockets["bad"].path == "/var/run/broken.sock"
    assert warned(config, "plugin bad.has.been.broken")


def test_issue567_env_without_env_section() -> None:
    config = circus("config/issue567.ini", {**ENVIRON, "GRAVITY": "down"})
    assert config.watchers["watcher1"].cmd == "down"


def test_stop_signal_and_children_issue594() -> None:
    watcher = circus("config/issue594.ini").watchers["my_app"]
    assert (watcher.stop_signal, watcher.stop_children) == (signal.SIGINT, True)
    assert watcher.graceful_timeout == 30.0


def test_reuseport() -> None:
    config = circus("config/reuseport.ini")
    assert config.sockets["reuseport"].so_reuseport is True
    assert config.sockets["noreuseport"].so_reuseport is False


def test_float_durations_and_ints() -> None:
    assert circus("config/issue1088.ini").watchers["my_app"].graceful_timeout == 25.5
    assert warned(circus("config/issue651.ini"), "[circus] check_delay: ignored")
    assert circus("config/issue137.ini").watchers["my_app"].uid == "me"


def test_shell_and_shell_args_issue665() -> None:
    config = circus("config/issue665.ini")
    assert (config.watchers["web1"].shell, config.watchers["web1"].shell_args) == (
        True, None,
    )  # fmt: skip
    assert config.watchers["web2"].shell_args == "bar baz qux"
    assert config.watchers["web3"].shell is False


def test_priorities_and_other_plugins_issue680() -> None:
    config = circus("config/issue680.ini")
    assert config.watchers["test1"].priority == 10
    assert config.watchers["test2"].priority == 20
    assert warned(config, "[plugin:myplugin] use: ignored: plugin circus.plugins.")


def test_include_globs_and_include_dir() -> None:
    config = circus("config/include.ini")
    assert list(config.watchers) == ["bar", "barbaz", "foo", "foobar"]
    assert len(config.files) == 5
    assert config.watchers["foo"].cmd == "sleep 120"
    assert warned(config, "included/barbaz.ini:2: [circus] check_delay: ignored")
    assert warned(config, "included/foobar.ini:5: [env:server]: matches no watcher")


def test_include_multiple_wildcards_first_value_wins() -> None:
    config = circus("config/multiple_wildcard.ini")
    assert list(config.watchers) == ["barbaz", "foobar", "server"]
    assert config.watchers["server"].env["INI"] == "private.ini"
    assert warned(config, "subsubdir1/barbaz.ini:6: [env:server] INI: ignored: "
                  "already set at")  # fmt: skip


def test_empty_include_is_a_warning() -> None:
    config = circus("config/empty_include.ini")
    assert warned(config, "[circus] include:", "garbage*.ini matches no file")
    assert warned(config, "[circus] include_dir:", "matches no file")


def test_empty_sections_are_skipped() -> None:
    config = circus("config/empty_section.ini")
    assert (dict(config.sockets), dict(config.watchers)) == ({}, {})


def test_circus_section_pidfile_loglevel_logoutput() -> None:
    config = circus("config/circus.ini")
    assert (config.pidfile, config.loglevel, config.logoutput) == (
        "pidfile", "debug", "logoutput",
    )  # fmt: skip


def test_dashes_in_socket_names_issue546() -> None:
    watcher = circus("config/issue546.ini").watchers["test"]
    assert watcher.sockets == frozenset({"some-socket"})
    fds = {"some-socket": 3}
    assert render(watcher.cmd, wid=1, socket_fds=fds) == "../bin/chaussette --fd 3"


def test_hash_is_not_an_inline_comment_issue53() -> None:
    watcher = circus("config/issue53.ini").watchers["test"]
    assert watcher.args == "-q  # invalid option, makes bash exit non-zero"
    assert watcher.numprocesses == 100


def test_rlimit_without_value_is_unlimited(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_text("[watcher:w]\ncmd = x\nrlimit_nofile =\nRLIMIT_CORE = 0\n")
    w = load(str(path), environ={}, log_warnings=False).watchers["w"]
    assert dict(w.rlimits) == {"nofile": resource.RLIM_INFINITY, "core": 0}


def test_watcher_config_is_frozen() -> None:
    watcher = circus("config/issue210.ini").watchers["my_app"]
    assert isinstance(watcher, WatcherConfig)
    with pytest.raises(AttributeError):
        watcher.numprocesses = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        watcher.env["X"] = "1"  # type: ignore[index]
