"""Exit when the parent (the supervisor) vanishes.

The kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) delivers
SIGTERM to the runner the moment its parent dies, so a worker drains and
exits instead of serving on as an orphan. It costs nothing while the parent
lives: no polling thread.

``main`` reads the parent's pid before anything else, then arms the signal
and compares: a parent that died in between (during the runner's boot) has
left the runner re-parented, and nobody would send the signal. The check
covers every mode, ``--reload`` included, whose worker child arms its own
signal against the reloading parent.

Known shortcomings:

- The kernel tracks the parent *thread*, not the process. A parent that
  spawns the runner from a thread which later exits (a thread pool, say)
  triggers the signal although the parent process lives on. The juggler
  supervisor spawns from its main thread. Serving such parents would take
  an option that skips the parent watch.
- A runner meant to outlive the program that started it (a wrapper that
  daemonizes it and exits) is stopped by the same signal, for the same
  want of an option.
- A parent that dies before the runner's ``main`` even starts (during the
  interpreter's start-up) is not noticed: its pid is already gone when it
  is read.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal

log = logging.getLogger("juggler.runner")

PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel for ``signum`` when the parent dies.

    ``parent_pid`` is the parent as read at start. Returns False when that
    parent is already gone (then no signal will come); True otherwise,
    including when the kernel refuses the request, which is only logged.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError) as exc:
        log.warning(
            "cannot watch the parent process (%s); an orphaned "
            "runner will keep serving",
            exc,
        )
        return True
    return os.getppid() == parent_pid
