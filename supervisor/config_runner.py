"""What the config can check of a ``runner serve`` command before it runs.

A typo in ``--backend`` would otherwise surface only when the workers
start: each runner exits at once with a usage error, and the watcher backs
off and retries while serving nothing. When the command runs the runner of
this very installation -- ``runner`` found on the watcher's PATH next to
this interpreter, or this interpreter with ``-m juggler.runner`` -- the
backends it knows are the ones this process knows, so a name outside them
is a config error. A runner of another installation (another virtualenv,
with backends of its own) is not second-guessed.

Known shortcoming: only the ``--backend NAME`` and ``--backend=NAME``
spellings are read, and not through ``shell = true`` or a wrapper script.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence

RUNNER_MODULE = "juggler.runner"


def unknown_backend(argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """Why ``argv`` names a backend its runner lacks; None if it does not
    (or if that runner is not this installation's, which we cannot know)."""
    name = _backend_option(argv)
    if name is None or name == "auto" or "$(" in name:
        return None
    if not _runs_our_runner(argv, env):
        return None
    from juggler.backends import registry

    known = registry.names()
    if name in known:
        return None
    return f'unknown runner backend "{name}" (known backends: {", ".join(known)})'


def _backend_option(argv: Sequence[str]) -> str | None:
    words = list(argv)
    for index, word in enumerate(words):
        if word == "--":
            break
        if word == "--backend" and index + 1 < len(words):
            return words[index + 1]
        if word.startswith("--backend="):
            return word.partition("=")[2]
    return None


def _runs_our_runner(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    if not argv:
        return False
    program = _resolve(argv[0], env)
    if program is None:
        return False
    ours = os.path.realpath(sys.executable)
    if os.path.basename(argv[0]) == "runner":
        script = os.path.join(os.path.dirname(sys.executable), "runner")
        return os.path.realpath(script) == program
    module = "-m" in argv[:-1] and argv[list(argv).index("-m") + 1] == RUNNER_MODULE
    return module and program == ours


def _resolve(program: str, env: Mapping[str, str]) -> str | None:
    """The file ``program`` runs, looked up as the spawn will look it up."""
    path = env.get("PATH", os.defpath)
    found = shutil.which(program, path=path)
    return os.path.realpath(found) if found else None
