"""The hook module Circus's documented example names (``my.hooks``).

The test copies it to ``my/hooks.py``; ``control_redis`` notes that it ran
(in ``before_start.ran`` next to the ``my`` folder) and lets the start go on.
"""

from pathlib import Path


def control_redis(watcher, arbiter, hook_name, **kwargs):
    marker = Path(__file__).resolve().parent.parent / f"{hook_name}.ran"
    marker.write_text(f"{watcher.name}\n")
    return True
