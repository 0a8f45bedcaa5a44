"""Exit when the parent (the supervisor) vanishes.

The kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) delivers
SIGTERM to the runner the moment its parent dies, so a worker drains and
exits instead of serving on as an orphan. It costs nothing while the parent
lives: no polling thread.

Known shortcoming: the kernel tracks the parent *thread*, not the process.
A parent that spawns the runner from a thread which later exits (a thread
pool, say) triggers the signal although the parent process lives on. The
juggler supervisor spawns from its main thread; other parents can pass
``--no-parent-watch`` (not implemented yet: it needs only a flag that skips
this call).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal

log = logging.getLogger("juggler.runner")

PR_SET_PDEATHSIG = 1


def exit_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel for ``signum`` when the parent dies; act if it has."""
    parent_pid = os.getppid()
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
        return
    # The parent may have died before prctl took effect: then we were
    # re-parented and nobody will send the signal.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)
