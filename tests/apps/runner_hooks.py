"""Hook functions for the runner's --pre-hook/--post-hook tests.

``mark`` and ``sleepy`` write ``$RUNNER_HOOK_DIR/<name>`` holding the pid;
``sleepy`` then sleeps ``$RUNNER_HOOK_SLEEP`` seconds (a slow boot step
during which a test can signal the runner).
"""

import os
import time

not_callable = 42


def _mark(name):
    path = os.path.join(os.environ["RUNNER_HOOK_DIR"], name)
    with open(path, "w") as f:
        f.write(str(os.getpid()))


def mark(settings):
    _mark("mark")


def sleepy(settings):
    _mark("sleepy")
    time.sleep(float(os.environ.get("RUNNER_HOOK_SLEEP", "1")))
    _mark("slept")


def failing(settings):
    raise RuntimeError("hook failed on purpose")
