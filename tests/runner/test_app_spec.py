"""parse_spec: the APP argument, parsed without ever running it as code."""

from __future__ import annotations

import sys

import pytest

from juggler.runner.app import AppSpec, parse_spec
from juggler.runner.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello:app", AppSpec("hello", ("app",))),
        ("pkg.sub.mod:app", AppSpec("pkg.sub.mod", ("app",))),
        ("hello:Holder.app", AppSpec("hello", ("Holder", "app"))),
        ("hello", AppSpec("hello", ("application",), bare=True)),
        ("hello.app", AppSpec("hello.app", ("application",), bare=True)),
        ("hello:", AppSpec("hello", ("application",))),
        ("hello:create_app()", AppSpec("hello", ("create_app",), ())),
        ('hello:create_app("Hi")', AppSpec("hello", ("create_app",), ("Hi",))),
        (
            "m:make(1, 2.5, None, debug=False, name='x')",
            AppSpec("m", ("make",), (1, 2.5, None), (("debug", False), ("name", "x"))),
        ),
        ("m:f([1, 2], {'a': (3,)})", AppSpec("m", ("f",), ([1, 2], {"a": (3,)}))),
        ("m:Factory.build()", AppSpec("m", ("Factory", "build"), ())),
        ("paste:conf/app.ini#main", AppSpec("", (), paste_uri="conf/app.ini#main")),
    ],
)
def test_parse_spec_accepts(text: str, expected: AppSpec) -> None:
    assert parse_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello:app", "hello:app"),
        ("hello", "hello:application"),
        ("m:A.b", "m:A.b"),
        ('m:f("x")', "m:f()"),
        ("paste:a.ini#x", "paste:a.ini#x"),
    ],
)
def test_spec_prints_as_given(text: str, expected: str) -> None:
    assert str(parse_spec(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a:b:c",
        "mod:1x",
        ":app",
        "1mod:app",
        "mod.:app",
        "my-mod:app",
        "mod:app[0]",
        "mod:app + 1",
        "mod:f()()",
        "mod:f(x)",  # a name is not a literal
        "mod:f(**options)",
        "mod:f(*args)",
        "paste:",
    ],
)
def test_parse_spec_refuses(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_spec(text)
    assert f'app "{text}"' in info.value.message
    assert "\n" not in info.value.message


def test_factory_arguments_are_never_evaluated() -> None:
    # If this were evaluated, it would import os and call it.
    with pytest.raises(UsageError, match="must be literals"):
        parse_spec('hello:create_app(__import__("os").getcwd())')


def test_refusal_names_the_expected_form() -> None:
    with pytest.raises(UsageError, match="expected module:attr"):
        parse_spec("mod:1x")


def test_python_paths_keep_their_order_when_one_is_the_working_directory(
    tmp_path, monkeypatch
):
    from juggler.runner.app import add_python_paths

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    monkeypatch.setattr(sys, "path", ["/usr/lib/python3", str(second)])
    add_python_paths([str(first), str(second)])
    assert sys.path == [str(first), str(second), "/usr/lib/python3"]
