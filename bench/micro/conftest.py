"""Fixtures of the micro-benchmarks: a real juggler daemon to talk to."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import pytest

from bench import children
from juggler.supervisor.client import Client
from juggler.supervisor.endpoint import parse
from juggler.supervisor.errors import SupervisorError

DAEMON_CONFIG = """\
[circus]
endpoint = unix://{tmp}/control.sock

[watcher:sleeper]
cmd = sleep 1000000
numprocesses = 1
"""


@pytest.fixture(scope="session")
def juggler_endpoint() -> Iterator[str]:
    """A running juggler with one sleeping watcher; its control endpoint.

    Stopped by its pid (its process group, then any child left) at the end.
    """
    # A short private folder of mode 0700: juggler requires that mode for
    # its control socket's directory, and a UNIX path has 108 bytes at most.
    tmp = tempfile.mkdtemp(prefix="juggler-micro-")
    path = os.path.join(tmp, "juggler.ini")
    with open(path, "w") as f:
        f.write(DAEMON_CONFIG.format(tmp=tmp))
    juggler = os.path.join(os.path.dirname(sys.executable), "juggler")
    proc = children.start([juggler, path], os.path.join(tmp, "juggler.log"))
    endpoint = f"unix://{tmp}/control.sock"
    try:
        children.wait_until(lambda: _running(endpoint), 30, "juggler's sleeper")
        yield endpoint
    finally:
        children.stop_tree(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _running(endpoint: str) -> bool:
    try:
        with Client(parse(endpoint), timeout=5) as client:
            status = client.call("status", name="sleeper")
    except (SupervisorError, OSError):
        return False
    return bool(status["state"] == "running" and status["processes"])
