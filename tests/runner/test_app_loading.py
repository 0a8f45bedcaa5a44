"""Loading the user's app: each way of naming it, and each way it can fail.

A broken app exits 4, so that a supervisor stops respawning it; the one-line
cause tells a wrong path from an error inside the user's own module, and the
latter comes with the user's traceback (not importlib's).
"""

from __future__ import annotations

from pathlib import Path

import harness
import pytest
from harness import run_cli

from runner.support import ANY_PORT, StandaloneRunner, assert_fails, get

# -- app errors: exit 4 --------------------------------------------------------


def test_missing_module_suggests_python_path() -> None:
    result = run_cli(["serve", *ANY_PORT, "no_such_module_here:app"])
    assert_fails(
        result,
        4,
        'cannot import app module "no_such_module_here"',
        'no module named "no_such_module_here"',
        "--python-path",
    )


def test_syntax_error_shows_the_users_file_and_line() -> None:
    result = run_cli(["serve", *ANY_PORT, "broken_syntax:app"])

    assert_fails(result, 4, 'app module "broken_syntax" raised SyntaxError')
    assert 'broken_syntax.py", line 1' in result.stderr
    assert "def app(environ, start_response)" in result.stderr
    assert "importlib" not in result.stderr
    assert "<frozen" not in result.stderr


def test_import_error_inside_the_users_module_is_told_apart() -> None:
    result = run_cli(["serve", *ANY_PORT, "broken_import:app"])

    line = assert_fails(
        result,
        4,
        'app module "broken_import" raised ModuleNotFoundError',
        "module_that_does_not_exist_anywhere",
    )
    assert "cannot import app module" not in line
    assert "--python-path" not in line
    assert 'broken_import.py", line 1' in result.stderr
    assert "<frozen" not in result.stderr


def test_missing_attribute() -> None:
    result = run_cli(["serve", *ANY_PORT, "hello:ap"])
    assert_fails(result, 4, 'module "hello" has no attribute "ap"')


def test_missing_nested_attribute() -> None:
    result = run_cli(["serve", *ANY_PORT, "hello:Holder.nope"])
    assert_fails(result, 4, 'object "hello.Holder" has no attribute "nope"')


def test_not_callable() -> None:
    result = run_cli(["serve", *ANY_PORT, "raising_factory:not_callable"])
    assert_fails(result, 4, "raising_factory:not_callable", "not a callable")


def test_factory_that_raises_shows_its_traceback() -> None:
    result = run_cli(["serve", *ANY_PORT, "raising_factory:create_app()"])

    assert_fails(
        result,
        4,
        'app factory "raising_factory:create_app()" raised RuntimeError',
        "database unreachable",
    )
    assert 'raising_factory.py", line 2, in create_app' in result.stderr


# -- the forms of APP ------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "body"),
    [
        ("hello:app", b"Hello, world!"),
        ("hello:Holder.app", b"Hello, world!"),
        ("hello:create_app()", b"Hello, factory!"),
        ('hello:create_app("Hi")', b"Hi, factory!"),
        ("hello:create_app(greeting='Hey')", b"Hey, factory!"),
        ("hello", b"Hello, world!"),
        # chaussette's spelling: no module has the whole dotted name.
        ("hello.app", b"Hello, world!"),
        ("dotted_pkg.web.app", b"dotted app"),
        # A module that exists keeps meaning module:application.
        ("dotted_pkg.web", b"dotted application"),
    ],
)
def test_app_forms(app: str, body: bytes) -> None:
    with harness.running(app) as runner:
        assert get(runner, "/") == (200, body)


def test_dotted_form_in_chaussettes_command_line() -> None:
    # Circus's documentation writes server.app, with no subcommand.
    with StandaloneRunner([*ANY_PORT, "hello.app"]) as runner:
        assert get(runner, "/") == (200, b"Hello, world!")


def test_dotted_form_with_a_missing_attribute() -> None:
    result = run_cli([*ANY_PORT, "hello.nope"])
    assert_fails(
        result,
        4,
        'cannot import app "hello.nope": there is no module of that name',
        'module "hello" has no attribute "nope"',
    )


def test_dotted_form_with_a_missing_package() -> None:
    result = run_cli(["serve", *ANY_PORT, "no_such_package_here.app"])
    assert_fails(
        result,
        4,
        'cannot import app module "no_such_package_here.app"',
        'no module named "no_such_package_here"',
    )


def test_paste_deploy_file(tmp_path: Path) -> None:
    ini = tmp_path / "app.ini"
    ini.write_text(
        "[app:greeter]\n"
        "use = call:conformance_wsgi:paste_app_factory\n"
        "greeting = Bonjour\n"
    )
    with harness.running(f"paste:{ini}#greeter") as runner:
        assert get(runner, "/") == (200, b"Bonjour, paste!")


def test_paste_deploy_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.ini"
    result = run_cli(["serve", *ANY_PORT, f"paste:{missing}#main"])
    assert_fails(result, 4, f'PasteDeploy file "{missing}" does not exist')
