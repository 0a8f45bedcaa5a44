"""Throughput rows summarised per configuration, across rounds.

A configuration is keyed by (transport, workload, backend, config); its
figures are the medians of the rounds that did not fail, and its spread is
the range of its rates over their median.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.profiles import ALL_BACKENDS, ALL_WORKLOADS
from bench.stacks import CONFIGS

Row = dict[str, Any]
Key = tuple[str, str, str, str]  # transport, workload, backend, config


@dataclass(frozen=True)
class Summary:
    """One configuration's figures across rounds."""

    key: Key
    rounds: int
    ok: int
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    spread_pct: float | None
    rps_min: float | None
    rps_max: float | None
    cpu_pct: float | None
    rss_mib: float | None
    error: str | None

    @property
    def config(self) -> str:
        return self.key[3]


def _median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def _order(key: Key) -> tuple[int, int, int, int]:
    transport, workload, backend, config = key
    return (
        0 if transport == "unix" else 1,
        _index(ALL_WORKLOADS, workload),
        _index(("-", *ALL_BACKENDS), backend),
        _index(CONFIGS, config),
    )


def _index(items: tuple[str, ...], item: str) -> int:
    return items.index(item) if item in items else len(items)


def summarise(rows: list[Row]) -> list[Summary]:
    groups: dict[Key, list[Row]] = {}
    for row in rows:
        key = (row["transport"], row["workload"], row["backend"], row["config"])
        groups.setdefault(key, []).append(row)
    return [_summary(key, groups[key]) for key in sorted(groups, key=_order)]


def _summary(key: Key, rows: list[Row]) -> Summary:
    good = [r for r in rows if not r.get("error")]
    rates = [float(r["rps"]) for r in good]
    median = _median(rates)
    spread = None
    if median and len(rates) > 1:
        spread = 100 * (max(rates) - min(rates)) / median
    errors = [r["error"] for r in rows if r.get("error")]
    return Summary(
        key=key,
        rounds=len(rows),
        ok=len(good),
        rps=median,
        p50_ms=_median(r["p50_ms"] for r in good),
        p99_ms=_median(r["p99_ms"] for r in good),
        errors=sum(int(r["errors"]) for r in good),
        spread_pct=spread,
        rps_min=min(rates) if rates else None,
        rps_max=max(rates) if rates else None,
        cpu_pct=_median(r.get("supervisor_cpu_pct") for r in good),
        rss_mib=_median(r.get("supervisor_rss_mib") for r in good),
        error=errors[0] if errors else None,
    )


def ratio(summaries: list[Summary], key: Key, against: str) -> float | None:
    """req/s of ``key`` over req/s of config ``against`` in the same cell."""
    by_key = {s.key: s for s in summaries}
    mine = by_key.get(key)
    other = by_key.get((*key[:3], against))
    if mine is None or other is None or not mine.rps or not other.rps:
        return None
    return mine.rps / other.rps
