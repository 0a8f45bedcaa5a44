"""PNG charts of the report, when matplotlib is installed (it is part of
the ``bench`` extra); without it the report says so.

- throughput: per (transport, workload), req/s per backend and
  configuration, the median of rounds with the range of the rounds drawn
  as a whisker (the spread);
- latency: the same groups, p99 as a light bar with p50 as a dark one
  inside it, in ms;
- restart: per backend, the median time a killed worker takes to be
  replaced by a serving one, per supervisor, with p95 as a whisker, on a
  log scale (circus polls every 5 s; juggler and gunicorn take ms).

Every function takes the figures the report is made of and writes files;
the names it returns are relative to the report's folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from bench.summary import Summary

COLOURS = {
    "ceiling": "#999999",
    "limit": "#4c72b0",
    "juggler": "#dd8452",
    "gunicorn": "#55a868",
    "circus": "#c44e52",
}

Row = dict[str, Any]
T = TypeVar("T")


def draw(
    summaries: list[Summary], process: list[Row], out_dir: str, stem: str
) -> list[str]:
    """Every chart of one report. Raises ImportError when matplotlib is
    missing."""
    import matplotlib

    matplotlib.use("Agg")
    names = []
    for transport, workload in sorted({(s.key[0], s.key[1]) for s in summaries}):
        chosen = [
            s
            for s in summaries
            if s.key[:2] == (transport, workload) and s.config != "ceiling" and s.ok
        ]
        if not chosen:
            continue
        where = f"{workload} via nginx -> {transport}"
        name = f"{stem}-{workload}-{transport}.png"
        throughput(chosen, where, os.path.join(out_dir, name))
        names.append(name)
        name = f"{stem}-latency-{workload}-{transport}.png"
        latency(chosen, where, os.path.join(out_dir, name))
        names.append(name)
    restarts = [r for r in process if r["measure"] == "restart" and r.get("median_ms")]
    if restarts:
        name = f"{stem}-restart.png"
        restart(restarts, os.path.join(out_dir, name))
        names.append(name)
    return names


def _placed(
    items: Sequence[T], config_of: Callable[[T], str], backend_of: Callable[[T], str]
) -> tuple[list[str], float, list[tuple[str, list[float], list[T]]]]:
    """Bars grouped by backend, one slot per configuration (in COLOURS'
    order): the backends, the bar width, and per configuration its bars'
    positions and items."""
    backends = sorted({backend_of(item) for item in items})
    configs = [c for c in COLOURS if any(config_of(item) == c for item in items)]
    width = 0.8 / max(1, len(configs))
    placed = []
    for i, config in enumerate(configs):
        mine = {backend_of(it): it for it in items if config_of(it) == config}
        positions = [b + i * width for b, name in enumerate(backends) if name in mine]
        placed.append((config, positions, [mine[n] for n in backends if n in mine]))
    return backends, width, placed


def _summary_config(s: Summary) -> str:
    return s.config


def _summary_backend(s: Summary) -> str:
    return s.key[2]


def throughput(summaries: list[Summary], title: str, path: str) -> None:
    import matplotlib.pyplot as plt

    backends, width, placed = _placed(summaries, _summary_config, _summary_backend)
    figure, axes = plt.subplots(figsize=(8, 4))
    for config, positions, shown in placed:
        heights = [s.rps or 0.0 for s in shown]
        below = [h - (s.rps_min or h) for h, s in zip(heights, shown, strict=True)]
        above = [(s.rps_max or h) - h for h, s in zip(heights, shown, strict=True)]
        axes.bar(positions, heights, width, label=config, color=COLOURS[config])
        axes.errorbar(
            positions, heights, yerr=[below, above], fmt="none", ecolor="black"
        )
    _backend_ticks(axes, backends, width)
    axes.set_ylabel("req/s (median; whisker: range of rounds)")
    axes.set_title(title)
    axes.legend()
    _save(figure, path)


def latency(summaries: list[Summary], title: str, path: str) -> None:
    import matplotlib.pyplot as plt

    backends, width, placed = _placed(summaries, _summary_config, _summary_backend)
    figure, axes = plt.subplots(figsize=(8, 4))
    for config, positions, shown in placed:
        colour = COLOURS[config]
        p99 = [s.p99_ms or 0.0 for s in shown]
        p50 = [s.p50_ms or 0.0 for s in shown]
        axes.bar(positions, p99, width, color=colour, alpha=0.45, label=config)
        axes.bar(positions, p50, width * 0.5, color=colour)
    _backend_ticks(axes, backends, width)
    axes.set_ylabel("latency ms (light: p99, dark: p50)")
    axes.set_title(f"latency, {title}")
    axes.legend()
    _save(figure, path)


def restart(rows: list[Row], path: str) -> None:
    import matplotlib.pyplot as plt

    backends, width, placed = _placed(
        rows, lambda r: str(r["config"]), lambda r: str(r["backend"])
    )
    figure, axes = plt.subplots(figsize=(8, 4))
    for config, positions, shown in placed:
        medians = [float(r["median_ms"]) for r in shown]
        above = [
            max(0.0, float(r.get("p95_ms") or m) - m)
            for r, m in zip(shown, medians, strict=True)
        ]
        bars = axes.bar(positions, medians, width, label=config, color=COLOURS[config])
        axes.bar_label(bars, fmt="%.0f ms", padding=2, fontsize=8)
        axes.errorbar(
            positions,
            medians,
            yerr=[[0.0] * len(medians), above],
            fmt="none",
            ecolor="black",
        )
    _backend_ticks(axes, backends, width)
    axes.set_yscale("log")
    axes.set_ylabel("ms until a new worker serves (median; whisker: p95)")
    axes.set_title("restart after SIGKILL of one worker")
    axes.legend()
    _save(figure, path)


def _backend_ticks(axes: Any, backends: list[str], width: float) -> None:
    axes.set_xticks([b + 0.4 - width / 2 for b in range(len(backends))])
    axes.set_xticklabels(backends)


def _save(figure: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
