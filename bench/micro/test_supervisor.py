"""The supervisor's in-process costs: reading a large config, and one
``status`` round trip on the control channel of a running juggler."""

from __future__ import annotations

from pathlib import Path

from pytest_benchmark.fixture import BenchmarkFixture

from bench.micro.configs import circus_ini
from juggler.supervisor.client import Client
from juggler.supervisor.config import load
from juggler.supervisor.endpoint import parse

WATCHERS = 100


def test_config_parse_100_watchers(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    path = tmp_path / "circus.ini"
    path.write_text(circus_ini(WATCHERS, str(tmp_path)))
    benchmark.extra_info["what"] = (
        f"load() of a Circus INI: {WATCHERS} watchers, 10 sockets, an env section each"
    )
    config = benchmark(load, str(path), environ={"HOME": "/home/app"})
    assert len(config.watchers) == WATCHERS
    assert config.watchers["app7"].numprocesses == 4
    assert not config.warnings


def test_status_round_trip(benchmark: BenchmarkFixture, juggler_endpoint: str) -> None:
    benchmark.extra_info["what"] = (
        "`status` request and answer on an open control connection "
        "(UNIX socket, JSON lines) to a juggler with one watcher"
    )
    with Client(parse(juggler_endpoint), timeout=10) as client:
        status = benchmark(client.call, "status")
    assert status["sleeper"]["state"] == "running"


def test_status_with_connect(
    benchmark: BenchmarkFixture, juggler_endpoint: str
) -> None:
    benchmark.extra_info["what"] = (
        "connect, `status`, close: what one `juggler status` costs beyond "
        "the Python start-up of the CLI"
    )

    def once() -> object:
        with Client(parse(juggler_endpoint), timeout=10) as client:
            return client.call("status", name="sleeper")

    status = benchmark(once)
    assert isinstance(status, dict) and status["processes"]
