"""How much to measure: ``--quick`` (CI, a few minutes) or ``--full``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ALL_BACKENDS = ("wsgiref", "gevent", "meinheld", "waitress", "uvicorn")
ALL_WORKLOADS = ("hello", "64k", "post", "wait")
# workload -> (path, wrk script or None)
WORKLOAD_PATHS = {
    "hello": "/",
    "64k": "/64k",
    "post": "/post",
    "wait": "/wait",
}
WORKLOAD_TITLES = {
    "hello": "hello world, 13 bytes",
    "64k": "64 KiB response",
    "post": "POST, 16 KiB body",
    "wait": "waits 10 ms (I/O bound)",
}


@dataclass(frozen=True)
class Profile:
    """One benchmark plan; every figure it uses is recorded in the report."""

    name: str
    rounds: int
    duration: float
    warmup: float
    backends: tuple[str, ...]
    workloads: tuple[str, ...]
    # Workloads also measured with nginx -> 127.0.0.1 (UNIX socket always).
    tcp_workloads: tuple[str, ...]
    kills: int
    idle_counts: tuple[int, ...]
    idle_window: float
    # Configurations measured on TCP too (the ceiling never reaches the
    # upstream, so its TCP row would repeat the UNIX one).
    tcp_configs: tuple[str, ...] = ("ceiling", "limit", "juggler", "gunicorn", "circus")
    # Backends measured on TCP too (None: all of ``backends``).
    tcp_backends: tuple[str, ...] | None = None
    # Workloads of the circus + chaussette reference rows (None: all).
    reference_workloads: tuple[str, ...] | None = None
    # The warm-up before each later workload of a started configuration
    # (None: ``warmup``); the first workload of a cell always gets ``warmup``.
    warmup_next: float | None = None
    # Backends of the restart rows. wsgiref pairs with gunicorn's gthread
    # and chaussette's wsgiref; meinheld (full only) shows that gunicorn's
    # meinheld worker takes its master down when a worker is SIGKILLed.
    process_backends: tuple[str, ...] = ("wsgiref",)
    # Backends of circus's restart rows (None: ``process_backends``): its
    # figure is its 5 s poll whatever the backend, at 5 s a kill.
    reference_restart_backends: tuple[str, ...] | None = None
    # Rolling reloads under load: how many, spread evenly in one wrk run of
    # reload_duration seconds, per supervisor and backend.
    reloads: int = 1
    reload_duration: float = 8
    reload_backends: tuple[str, ...] = ("wsgiref",)
    # Micro-benchmarks: about this many seconds of timing each, and at
    # least this many rounds (pytest-benchmark's max-time and min-rounds).
    micro_max_time: float = 0.1
    micro_min_rounds: int = 5

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


QUICK = Profile(
    name="quick",
    rounds=1,
    duration=5,
    warmup=2,
    backends=("wsgiref", "gevent", "meinheld", "uvicorn"),
    workloads=("hello",),
    tcp_workloads=(),
    kills=5,
    idle_counts=(1, 100),
    idle_window=3,
)

FULL = Profile(
    name="full",
    rounds=5,
    duration=10,
    warmup=2,
    backends=ALL_BACKENDS,
    workloads=ALL_WORKLOADS,
    tcp_workloads=("hello",),
    tcp_backends=("wsgiref", "meinheld"),
    tcp_configs=("limit", "juggler", "gunicorn"),
    reference_workloads=("hello",),
    warmup_next=1,
    kills=20,
    idle_counts=(1, 100, 1000),
    idle_window=10,
    process_backends=("wsgiref", "meinheld"),
    reference_restart_backends=("wsgiref",),
    reloads=3,
    reload_duration=20,
    reload_backends=("wsgiref", "meinheld"),
    micro_max_time=1.0,
    micro_min_rounds=10,
)

PROFILES = {"quick": QUICK, "full": FULL}
