"""Fixtures of the conformance corpus: one real runner per backend and family.

Every test that takes ``served`` runs once per (backend, family) in
``TARGETS``; a backend that speaks both interfaces (hypercorn) is in it
once per interface, its WSGI side as ``hypercorn-wsgi``. The runner behind
it is started once per test module (a module-scoped fixture) and shared by
that module's tests, which is why a test here never stops or kills it;
tests that do get their own runner from ``start_runner``. After each test,
``served`` checks the runner is still alive: no request, however bad, may
take the worker down.

A test names its exchange with ``@pytest.mark.exchange("name")``; a
``limits.KNOWN_LIMITS`` entry for that backend and exchange turns it into a
strict xfail.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import harness
import httpx
import pytest

from conformance import wire
from conformance.limits import KNOWN_LIMITS
from juggler.backends import registry

# The tests share the apps' constants (the body of /hello, the /stream chunks).
if str(harness.APPS_DIR) not in sys.path:
    sys.path.append(str(harness.APPS_DIR))

# The backends that speak ASGI get the ASGI twin of the app, and those that
# speak WSGI too get a second target for it. This is written out rather than
# read from each adapter, so that collecting the suite does not depend on
# every adapter being importable.
ASGI_BACKENDS = frozenset({"uvicorn", "hypercorn"})
BOTH_INTERFACES = frozenset({"hypercorn"})
FAMILIES = ("tcp", "unix")
MODULE_GRACEFUL_TIMEOUT = "5"


@dataclass(frozen=True)
class Target:
    """One backend, serving one interface, on one socket family."""

    backend: str
    family: str
    interface: str = "wsgi"

    @property
    def name(self) -> str:
        """The backend, and the interface where the backend has two."""
        if self.backend in BOTH_INTERFACES and self.interface == "wsgi":
            return f"{self.backend}-wsgi"
        return self.backend

    @property
    def app(self) -> str:
        return f"conformance_{self.interface}:app"

    @property
    def args(self) -> tuple[str, ...]:
        return ("--interface", self.interface)

    def __str__(self) -> str:
        return f"{self.name}-{self.family}"


def _targets(family: str) -> list[Target]:
    targets = []
    for name in registry.BUILTIN:
        default = "asgi" if name in ASGI_BACKENDS else "wsgi"
        targets.append(Target(name, family, default))
        if name in BOTH_INTERFACES:
            targets.append(Target(name, family, "wsgi"))
    return targets


TARGETS = [target for family in FAMILIES for target in _targets(family)]
TCP6_TARGETS = _targets("tcp6")


class Served:
    """A running runner and the ways to talk to it."""

    def __init__(self, target: Target, runner: harness.RunnerProcess) -> None:
        self.target = target
        self.runner = runner

    @property
    def unix_path(self) -> str | None:
        address = self.runner.address
        return address if isinstance(address, str) else None

    def connect(self, timeout: float = 20.0) -> wire.Connection:
        return wire.Connection(self.runner.connect(timeout))

    def request(self, method: str, target: str, **kwargs: object) -> wire.Response:
        """One exchange on a fresh connection."""
        with self.connect() as conn:
            return conn.request(method, target, **kwargs)  # type: ignore[arg-type]

    def httpx_client(self, timeout: float = 30.0) -> httpx.Client:
        if self.unix_path is not None:
            transport = httpx.HTTPTransport(uds=self.unix_path)
            return httpx.Client(
                transport=transport, base_url="http://localhost", timeout=timeout
            )
        address = self.runner.address
        assert isinstance(address, tuple)
        host, port = address
        host = f"[{host}]" if ":" in host else host
        return httpx.Client(base_url=f"http://{host}:{port}", timeout=timeout)

    def client_address(self, conn: wire.Connection) -> tuple[str, str]:
        """The REMOTE_ADDR and REMOTE_PORT the server should see for ``conn``."""
        if conn.sock.family == socket.AF_UNIX:
            return "", ""
        host, port = conn.sock.getsockname()[:2]
        return host, str(port)


def start_runner(
    target: Target, extra_args: tuple[str, ...] = ()
) -> harness.RunnerProcess:
    runner = harness.RunnerProcess(
        target.app,
        backend=target.backend,
        family=target.family,
        extra_args=(*target.args, *extra_args),
    )
    try:
        runner.start()
    except BaseException:
        runner.stop()
        raise
    return runner


@contextlib.contextmanager
def own_runner(target: Target, extra_args: tuple[str, ...] = ()) -> Iterator[Served]:
    """A runner for one test alone, stopped (group and all) at its end."""
    runner = start_runner(target, extra_args)
    try:
        yield Served(target, runner)
    finally:
        runner.stop()


@pytest.fixture(scope="module", params=TARGETS, ids=str)
def _module_runner(request: pytest.FixtureRequest) -> Iterator[Served]:
    target: Target = request.param
    extra = ("--graceful-timeout", MODULE_GRACEFUL_TIMEOUT)
    with own_runner(target, extra) as served:
        yield served


@pytest.fixture
def served(_module_runner: Served) -> Iterator[Served]:
    """The module's runner for this target; it must survive every test."""
    runner = _module_runner.runner
    if runner.poll() is not None:
        # Fail at once: the socket still queues connections nobody accepts.
        pytest.fail(f"the runner died in an earlier test (exit {runner.poll()})")
    yield _module_runner
    code = runner.poll()
    assert code is None, f"the runner died (exit {code}); log:\n{runner.log()}"


# -- known limits as strict xfails --------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "exchange(name): the corpus exchange a test performs"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        reason = _known_limit(item)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))


def _known_limit(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("exchange")
    callspec = getattr(item, "callspec", None)
    if marker is None or callspec is None:
        return None
    target = callspec.params.get("_module_runner", callspec.params.get("target"))
    if not isinstance(target, Target):
        return None
    exchange = marker.args[0]
    return KNOWN_LIMITS.get(
        (target.name, exchange, target.family),
        KNOWN_LIMITS.get((target.name, exchange)),
    )
