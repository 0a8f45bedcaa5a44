"""A backend added by another package, through the ``juggler.backends``
entry-point group, as a real installed distribution would add it."""

from __future__ import annotations

import os
from pathlib import Path

import harness
import pytest
from harness import http_get, run_cli
from runner.support import assert_fails

# The third party's module: its own Backend subclass, here one that serves
# with the wsgiref adapter and marks each answer, so a test can tell who
# served it.
MODULE = """
from juggler.backends.base import Backend
from juggler.backends.wsgiref import WsgirefBackend


class MarkedBackend(Backend):
    name = "marked"
    interfaces = frozenset({"wsgi"})

    def serve(self, sock, app, context):
        def marked(environ, start_response):
            def start(status, headers, exc_info=None):
                return start_response(status, [*headers, ("X-Served-By", "marked")],
                                      exc_info)
            return app(environ, start)

        WsgirefBackend().serve(sock, marked, context)


class NotABackend:
    pass
"""

ENTRY_POINTS = """\
[juggler.backends]
marked = juggler_marked:MarkedBackend
missing = juggler_nowhere:Backend
wrongtype = juggler_marked:NotABackend
wsgiref = juggler_marked:MarkedBackend
"""


@pytest.fixture
def site(tmp_path: Path) -> dict[str, str]:
    """A folder holding the package and its dist-info; the env to find it."""
    (tmp_path / "juggler_marked.py").write_text(MODULE)
    info = tmp_path / "juggler_marked-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: juggler-marked\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def test_runner_backends_lists_it(site: dict[str, str]) -> None:
    done = run_cli(["backends"], env={**os.environ, **site})
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert "marked" in names
    # A built-in name wins a clash, and is listed once.
    assert names.count("wsgiref") == 1


def test_it_serves_an_inherited_socket(site: dict[str, str]) -> None:
    with (
        harness.running("hello:app", backend="marked", env=site) as runner,
        runner.connect() as client,
    ):
        client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"X-Served-By: marked" in answer


def test_a_built_in_name_is_never_taken_over(site: dict[str, str]) -> None:
    with harness.running("hello:app", backend="wsgiref", env=site) as runner:
        assert http_get(runner.address) == (200, b"Hello, world!")
        assert "backend=wsgiref" in runner.log()


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("missing", "points at juggler_nowhere:Backend, which cannot be loaded"),
        ("wrongtype", "is not a juggler.backends.base.Backend subclass"),
    ],
)
def test_a_broken_entry_cannot_boot(
    site: dict[str, str], name: str, cause: str
) -> None:
    with harness.bind_tcp() as sock:
        fd = sock.fileno()
        done = run_cli(
            ["serve", "--fd", str(fd), "--backend", name, "hello:app"],
            env={**os.environ, **site},
            pass_fds=(fd,),
        )
    assert_fails(done, 3, f'backend "{name}"', cause)
