"""--pre-hook and --post-hook: their errors are the hooks', not the app's.

A pre-hook that cannot be loaded or raises stops the boot with exit 4, like
a broken app; so does a post-hook that cannot be loaded (both are imported
at boot). A post-hook that raises when the worker stops is logged, and the
exit status stays the stop's.
"""

from __future__ import annotations

from pathlib import Path

import harness
import pytest
from harness import run_cli

from runner.support import ANY_PORT, assert_fails, get, stop_and_wait

APP = "hello:app"


@pytest.mark.parametrize("option", ["--pre-hook", "--post-hook"])
def test_missing_hook_module(option: str) -> None:
    result = run_cli(["serve", *ANY_PORT, option, "no_such_hook_module:fn", APP])
    line = assert_fails(
        result,
        4,
        f'{option} "no_such_hook_module:fn": cannot import module '
        '"no_such_hook_module": no module named "no_such_hook_module"',
        "--python-path",
    )
    assert "app" not in line.replace("apps", "")


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("runner_hooks:nope", 'module "runner_hooks" has no attribute "nope"'),
        ("runner_hooks:not_callable", "is a int, not a function"),
    ],
)
def test_hook_that_is_no_function(target: str, fragment: str) -> None:
    result = run_cli(["serve", *ANY_PORT, "--pre-hook", target, APP])
    line = assert_fails(result, 4, f'--pre-hook "{target}"', fragment)
    assert "WSGI" not in line and "app" not in line


@pytest.mark.parametrize("target", ["runner_hooks", "paste:x.ini", "m:f()"])
def test_hook_of_the_wrong_form(target: str) -> None:
    result = run_cli(["serve", *ANY_PORT, "--post-hook", target, APP])
    assert_fails(result, 2, f'--post-hook "{target}": expected module:function')


def test_pre_hook_that_raises_fails_the_boot() -> None:
    result = run_cli(["serve", *ANY_PORT, "--pre-hook", "runner_hooks:failing", APP])
    assert_fails(
        result,
        4,
        '--pre-hook "runner_hooks:failing" raised RuntimeError: hook failed on purpose',
    )
    assert 'runner_hooks.py", line ' in result.stderr  # the user's traceback
    assert "serving: " not in result.stderr


def test_post_hook_that_raises_keeps_the_clean_exit() -> None:
    args = ["--post-hook", "runner_hooks:failing"]
    with harness.running(APP, extra_args=args) as runner:
        assert get(runner, "/")[0] == 200
        assert stop_and_wait(runner) == 0
        log = runner.log()
    assert (
        'ERROR juggler.runner: --post-hook "runner_hooks:failing" raised '
        "RuntimeError: hook failed on purpose"
    ) in log
    assert "stopped: pid=" in log


def test_circus_dotted_hook(tmp_path: Path) -> None:
    args = ["--env", f"RUNNER_HOOK_DIR={tmp_path}", "--pre-hook", "runner_hooks.mark"]
    with harness.running(APP, extra_args=args) as runner:
        assert (tmp_path / "mark").read_text() == str(runner.proc.pid)  # type: ignore[union-attr]
