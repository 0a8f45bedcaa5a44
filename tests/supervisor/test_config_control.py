"""The [circus] keys of the control channel: who may use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from juggler.supervisor.config import ConfigError, load


def write(tmp_path: Path, circus: str) -> str:
    path = tmp_path / "c.ini"
    path.write_text(f"[circus]\n{circus}\n\n[watcher:w]\ncmd = sleep 1\n")
    return str(path)


def test_allowed_users_takes_names_and_uids(tmp_path):
    config = load(write(tmp_path, "allowed_users = root, 1001,nobody"))
    assert config.allowed_users == frozenset({0, 1001, 65534})
    assert load(write(tmp_path, "")).allowed_users == frozenset()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            "allowed_users = root, no-such-user",
            "allowed_users: no user named 'no-such-user' on this system",
        ),
        (
            "allowed_users = ,",
            "allowed_users: expected user names or uids, separated by commas",
        ),
        (
            "endpoint_owner = no-such-user",
            "endpoint_owner: no user named 'no-such-user' on this system",
        ),
    ],
)
def test_an_unknown_user_is_an_error_at_its_line(tmp_path, line, reason):
    path = write(tmp_path, line)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.errors == (f"{path}:2: [circus] {reason}",)
