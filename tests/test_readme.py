"""The README says what the code does: its lists come from the code."""

from __future__ import annotations

from harness import REPO_DIR

from juggler.backends import registry
from juggler.supervisor.config_model import (
    UNSUPPORTED_CIRCUS_OPTIONS,
    UNSUPPORTED_WATCHER_OPTIONS,
)

README = (REPO_DIR / "README.md").read_text()


def test_every_unimplemented_circus_option_is_listed_with_its_reason():
    for key, why in {
        **UNSUPPORTED_CIRCUS_OPTIONS,
        **UNSUPPORTED_WATCHER_OPTIONS,
    }.items():
        assert f"| `{key}` | {why} |" in README


def test_every_builtin_backend_is_in_the_table():
    for name in registry.BUILTIN:
        assert f"| `{name}` |" in README


def test_quick_start_is_the_two_make_commands():
    quick_start = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [
        line.split("#")[0].strip()
        for line in quick_start.splitlines()
        if line.startswith("make ")
    ]
    assert commands == ["make demo", "make test"]
