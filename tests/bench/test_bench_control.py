"""How the bench reads each supervisor's workers and makes it reload: the
command lines, and a real juggler asked over its control channel."""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import wait_for

from bench import control, probe, stacks

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def make_stack(config, tmp, workers=2):
    ctx = stacks.Context(str(tmp))
    return stacks.Stack(config, ctx, "wsgiref", f"unix:{tmp}/web.sock", workers)


def test_juggler_reloads_through_its_cli_on_the_private_endpoint(tmp_path):
    stack = make_stack("juggler", tmp_path)
    assert control.reload_command(stack) == [
        str(BIN / "juggler"),
        "--endpoint",
        f"unix://{tmp_path}/control.sock",
        "reload",
        "web",
    ]


def test_circus_reload_waits_and_gunicorn_gets_a_signal(tmp_path):
    args = control.reload_command(make_stack("circus", tmp_path))
    assert args[0] == str(BIN / "circusctl")
    assert args[1:3] == ["--endpoint", f"ipc://{tmp_path}/circus-control"]
    assert args[-3:] == ["reload", "web", "--waiting"]
    assert control.reload_command(make_stack("gunicorn", tmp_path)) == []


def test_restart_mechanism_names_the_spare_only_when_there_is_one():
    assert "spare" in control.restart_mechanism("juggler", 1)
    assert "spare" not in control.restart_mechanism("juggler", 0).split("(")[0]
    assert "forks" in control.restart_mechanism("gunicorn", 0)
    assert "check_delay" in control.restart_mechanism("circus", 0)


def test_the_bench_juggler_config_keeps_a_spare(tmp_path):
    # The product default (one spare for a runner watcher) must not be
    # turned off by the config the bench writes.
    cmd = stacks.runner_args(
        str(BIN / "runner"), "wsgiref", "$(circus.sockets.web)", str(REPO)
    )
    path = tmp_path / "juggler.ini"
    path.write_text(stacks.juggler_ini(f"unix:{tmp_path}/web.sock", cmd, 2, "notify"))
    done = subprocess.run(
        [str(BIN / "juggler"), "--check", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout)["watchers"]["web"]["spare_processes"] == 1


def test_a_real_juggler_reports_its_spare_and_reloads_every_worker():
    # A short private folder: it holds UNIX sockets (108-byte paths).
    tmp = tempfile.mkdtemp(prefix="juggler-bench-test-")
    stack = make_stack("juggler", tmp)
    try:
        stack.start()
        assert control.expected_spares(stack) == 1
        wait_for(lambda: control.settled(stack, 1))
        before = control.workers(stack)
        assert len([w for w in before if w.spare]) == 1
        serving = {w.pid for w in before if not w.spare}
        assert len(serving) == 2
        assert probe.get(stack.address)[1] in serving
        control.reload(stack)  # returns once every new process is ready
        after = {w.pid for w in control.serving(stack)}
        assert len(after) == 2
        assert not after & serving
        assert probe.get(stack.address)[1] in after
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
