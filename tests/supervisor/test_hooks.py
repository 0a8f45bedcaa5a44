"""Hooks: the juggler contract as units, then in a real juggler."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from harness import APPS_DIR, SupervisorProcess, wait_for

from juggler.supervisor import hooks as hooks_mod
from juggler.supervisor.config_model import HookConfig, WatcherConfig
from juggler.supervisor.hooks import Hook, HookError, Hooks, import_target

# -- units -------------------------------------------------------------------


def test_import_target_takes_dots_and_colons():
    assert import_target("os.path.join") is os.path.join
    assert import_target("os:path.join") is os.path.join


def test_import_target_adds_the_watchers_pythonpath():
    found = import_target("hooks_probe.record", [str(APPS_DIR)])
    assert found.__name__ == "record"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_here.fn", "no module named 'no_such_module_here'"),
        ("os.no_such_function", "module 'os' has no attribute 'no_such_function'"),
        ("justaname", "expected module.function or module:function"),
    ],
)
def test_import_failures_are_one_clear_line(target, message):
    with pytest.raises(HookError) as caught:
        import_target(target)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_import_error_inside_the_users_module_is_told_apart(tmp_path):
    (tmp_path / "hooks_broken_inside.py").write_text("import not_installed_pkg\n")
    with pytest.raises(HookError) as caught:
        import_target("hooks_broken_inside.fn", [str(tmp_path)])
    assert "importing hooks_broken_inside failed" in str(caught.value)
    assert "not_installed_pkg" in str(caught.value)


@dataclass
class FakeWatcher:
    """Only what Hooks.call reads; the hooks under test run for real."""

    name: str = "web"
    numprocesses: int = 1
    state: str = "running"
    processes: dict[int, Any] = field(default_factory=dict)
    config: WatcherConfig = field(
        default_factory=lambda: WatcherConfig(name="web", cmd="true")
    )


def run_hook(function, *, ignore=False, **kwargs) -> bool:
    hooks = Hooks("web", {"before_start": Hook(
        HookConfig("before_start", "tests.fn", ignore), function
    )})  # fmt: skip
    return asyncio.run(hooks.call("before_start", FakeWatcher(), **kwargs))


def test_a_hook_gets_snapshots_and_its_kwargs():
    seen: dict[str, Any] = {}

    def hook(watcher, arbiter, hook_name, **kwargs):
        seen.update(kwargs, watcher=watcher, arbiter=arbiter, hook_name=hook_name)
        seen["thread"] = threading.current_thread().name
        return True

    assert run_hook(hook, pid=42) is True
    assert seen["hook_name"] == "before_start" and seen["pid"] == 42
    assert seen["watcher"].name == "web" and seen["watcher"].state == "running"
    assert seen["arbiter"].pid == os.getpid()
    assert seen["thread"] != threading.main_thread().name


@pytest.mark.parametrize(
    ("result", "raises"), [(False, None), (None, None), (True, RuntimeError)]
)
def test_false_none_or_an_exception_vetoes_unless_ignored(result, raises, caplog):
    def hook(**kwargs):
        if raises:
            raise raises("boom")
        return result

    assert run_hook(hook) is False
    assert run_hook(hook, ignore=True) is True
    failures = [r.getMessage() for r in caplog.records if "hook failed" in r.message]
    assert failures[0].startswith("hook failed: web before_start (tests.fn) ")
    assert failures[0].endswith("; vetoed") and failures[1].endswith("; ignored")


def test_a_hook_that_hangs_is_cut_at_the_timeout(monkeypatch, caplog):
    monkeypatch.setattr(hooks_mod, "HOOK_TIMEOUT", 0.2)
    release = threading.Event()

    def hook(**kwargs):
        release.wait(30)
        return True

    try:
        assert run_hook(hook) is False
    finally:
        release.set()
    assert "did not return within 0.2s" in caplog.text


# -- a real juggler ------------------------------------------------------------

IDLE = "{python} {apps}/stubborn.py"


def hooked(name: str, hooks: str, extra: str = "") -> str:
    return f"""
[watcher:{name}]
cmd = {IDLE}
graceful_timeout = 1
stop_signal = SIGKILL
{hooks}
{extra}

[env:{name}]
HOOK_DIR = {{tmp}}
PYTHONPATH = {{apps}}
"""


PLAIN = """
[watcher:plain]
cmd = {python} {apps}/stubborn.py
stop_signal = SIGKILL
"""


@pytest.fixture
def supervisor():
    started: list[SupervisorProcess] = []

    def start(config: str, env=None, **kwargs: object) -> SupervisorProcess:
        sup = SupervisorProcess(config, env=env)
        started.append(sup)
        sup.start(**kwargs)  # type: ignore[arg-type]
        return sup

    yield start
    for sup in started:
        sup.stop()


def calls(sup: SupervisorProcess) -> list[dict[str, Any]]:
    try:
        with open(os.path.join(sup.tmp, "hooks.jsonl")) as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []


def states(sup: SupervisorProcess) -> dict[str, str]:
    status = sup.ctl_json("status")
    assert isinstance(status, dict)
    return {name: w["state"] for name, w in status.items()}


def test_before_start_veto_keeps_its_watcher_stopped_and_others_start(supervisor):
    sup = supervisor(hooked("vetoed", "hooks.before_start = hooks_probe.veto") + PLAIN)
    assert states(sup) == {"plain": "running", "vetoed": "stopped"}
    assert [c["hook"] for c in calls(sup)] == ["before_start"]
    assert (
        "hook failed: vetoed before_start (hooks_probe.veto) returned False; vetoed"
        in sup.log()
    )


def test_spawn_stop_and_reap_hooks_get_their_pids(supervisor):
    names = [
        *("before_spawn", "after_spawn", "before_signal", "after_signal"),
        *("before_stop", "after_stop", "before_reap", "after_reap", "after_start"),
    ]
    hooks = "\n".join(f"hooks.{n} = hooks_probe.record" for n in names)
    sup = supervisor(hooked("w", hooks, "numprocesses = 2"))
    pids = sup.serving()
    spawned = [c for c in calls(sup) if c["hook"] == "after_spawn"]
    assert sorted(c["pid"] for c in spawned) == pids
    assert [c["wid"] for c in spawned] == [1, 2]

    sup.ctl_json("stop", "w")
    wait_for(
        lambda: len([c for c in calls(sup) if c["hook"] == "after_reap"]) == 2,
        message="two after_reap calls",
    )
    order = [c["hook"] for c in calls(sup)]
    assert order.index("after_start") > order.index("after_spawn")
    assert order.index("before_stop") < order.index("before_signal")
    signalled = [c for c in calls(sup) if c["hook"] == "before_signal"]
    assert sorted(c["pid"] for c in signalled) == pids
    assert {c["signum"] for c in signalled} == {9}
    reaped = [c for c in calls(sup) if c["hook"] == "after_reap"]
    assert sorted(c["process_pid"] for c in reaped) == pids
    assert {(c["exit_code"], c["process_status"]) for c in reaped} == {(-9, None)}


def test_a_failing_hook_with_ignore_failure_does_not_veto(supervisor):
    sup = supervisor(hooked("w", "hooks.before_start = hooks_probe.fail, true"))
    assert states(sup) == {"w": "running"}
    assert (
        "hook failed: w before_start (hooks_probe.fail) raised RuntimeError: "
        "failing on purpose; ignored" in sup.log()
    )


def test_an_after_spawn_veto_stops_the_process_and_the_watcher(supervisor):
    sup = supervisor(hooked("w", "hooks.after_spawn = hooks_probe.fail") + PLAIN)
    assert states(sup) == {"plain": "running", "w": "stopped"}
    vetoed = [c["pid"] for c in calls(sup) if c["hook"] == "after_spawn"]
    assert len(vetoed) == 1
    sup.wait_log(f"exited: w[1] pid={vetoed[0]}")
    assert len(sup.serving()) == 1  # only plain's process


def test_a_hanging_hook_is_cut_at_its_timeout_and_status_still_answers(supervisor):
    sup = supervisor(
        hooked("slow", "hooks.before_start = hooks_probe.hang") + PLAIN,
        env={"JUGGLER_HOOK_TIMEOUT": "5"},
        wait="control: listening",
    )
    wait_for(lambda: calls(sup), message="the hook to start hanging")
    # The arbiter is waiting for the hook, yet the control channel answers.
    assert states(sup)["slow"] == "stopped"
    assert "did not return" not in sup.log()
    sup.wait_log("started:")
    assert (
        "hook failed: slow before_start (hooks_probe.hang) did not return within "
        "5s (its thread is left running); vetoed" in sup.log()
    )
    assert states(sup) == {"plain": "running", "slow": "stopped"}


@pytest.mark.parametrize(
    ("target", "cause"),
    [
        ("hooks_probe_missing.fn", "no module named 'hooks_probe_missing'"),
        ("hooks_probe.nothing_here", "module 'hooks_probe' has no attribute"),
    ],
)
def test_a_hook_that_cannot_be_imported_keeps_only_its_watcher_stopped(
    supervisor, target, cause
):
    sup = supervisor(hooked("broken", f"hooks.before_start = {target}") + PLAIN)
    assert states(sup) == {"broken": "stopped", "plain": "running"}
    line = next(x for x in sup.log().splitlines() if "the watcher will not start" in x)
    assert f"broken: hooks.before_start = {target}: {cause}" in line
    # Asking again gives the same one-line cause, and still does not start it.
    assert sup.log().count("not starting: broken: hooks.before_start") == 1
    done = sup.ctl("start", "broken")
    assert done.returncode == 1
    # One line: the command failed, and why.
    [line] = done.stderr.splitlines()
    assert line.startswith(
        f"error: did not start: broken: hooks.before_start = {target}"
    )
    assert cause in line
    assert states(sup)["broken"] == "stopped"
    assert sup.log().count("not starting: broken: hooks.before_start") == 2
