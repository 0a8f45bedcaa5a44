"""Hook functions for test_hooks, written as a Circus user writes them.

Each call is recorded as a JSON line in ``$HOOK_DIR/hooks.jsonl`` (HOOK_DIR
comes from the watcher's environment) before the hook answers.
"""

import json
import os
import time


def _record(watcher, arbiter, hook_name, **kwargs):
    entry = {
        "hook": hook_name,
        "watcher": watcher.name,
        "state": watcher.state,
        "pids": list(watcher.pids),
        "arbiter_pid": arbiter.pid,
        **kwargs,
    }
    with open(os.path.join(watcher.env["HOOK_DIR"], "hooks.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def record(watcher, arbiter, hook_name, **kwargs):
    _record(watcher, arbiter, hook_name, **kwargs)
    return True


def veto(watcher, arbiter, hook_name, **kwargs):
    _record(watcher, arbiter, hook_name, **kwargs)
    return False


def fail(watcher, arbiter, hook_name, **kwargs):
    _record(watcher, arbiter, hook_name, **kwargs)
    raise RuntimeError("failing on purpose")


def hang(watcher, arbiter, hook_name, **kwargs):
    _record(watcher, arbiter, hook_name, **kwargs)
    time.sleep(120)  # cut at JUGGLER_HOOK_TIMEOUT; the thread dies with juggler
    return True
