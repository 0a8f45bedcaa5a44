"""PNG bar charts of the throughput table, when matplotlib is installed
(it is part of the ``bench`` extra); without it the report says so."""

from __future__ import annotations

import os

from bench.summary import Summary

COLOURS = {
    "ceiling": "#999999",
    "limit": "#4c72b0",
    "juggler": "#dd8452",
    "gunicorn": "#55a868",
    "circus": "#c44e52",
}


def draw(summaries: list[Summary], out_dir: str, stem: str) -> list[str]:
    """One chart per (transport, workload); the file names, relative to
    ``out_dir``. Raises ImportError when matplotlib is missing."""
    import matplotlib

    matplotlib.use("Agg")
    names = []
    for transport, workload in sorted({(s.key[0], s.key[1]) for s in summaries}):
        chosen = [
            s
            for s in summaries
            if s.key[:2] == (transport, workload) and s.config != "ceiling"
        ]
        name = f"{stem}-{workload}-{transport}.png"
        _bars(
            chosen, f"{workload} via nginx -> {transport}", os.path.join(out_dir, name)
        )
        names.append(name)
    return names


def _bars(summaries: list[Summary], title: str, path: str) -> None:
    import matplotlib.pyplot as plt

    backends = sorted({s.key[2] for s in summaries})
    configs = [c for c in COLOURS if any(s.config == c for s in summaries)]
    width = 0.8 / max(1, len(configs))
    figure, axes = plt.subplots(figsize=(8, 4))
    for i, config in enumerate(configs):
        rates = {s.key[2]: s.rps or 0.0 for s in summaries if s.config == config}
        positions = [b + i * width for b in range(len(backends))]
        heights = [rates.get(backend, 0.0) for backend in backends]
        axes.bar(positions, heights, width, label=config, color=COLOURS[config])
    axes.set_xticks([b + 0.4 - width / 2 for b in range(len(backends))])
    axes.set_xticklabels(backends)
    axes.set_ylabel("req/s (median of rounds)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
