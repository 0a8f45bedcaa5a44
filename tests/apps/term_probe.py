"""A process and its child in one process group, both noting SIGTERM.

``term_probe.py DIR``: the parent forks a child and writes its pid in
``DIR/<parent pid>.child``. Each writes ``DIR/<its pid>.term`` when SIGTERM
reaches it, then exits. The child also exits once its parent is gone, so
that a test of a stop that spares it leaves nothing behind.
"""

import os
import signal
import sys
import time

directory = sys.argv[1]


def note_and_exit(signum, frame):
    with open(os.path.join(directory, f"{os.getpid()}.term"), "w"):
        pass
    if child:
        # Give a child that heard the signal too the time to note it: once
        # the parent is gone, a stop kills what is left of its group.
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline and os.waitpid(child, os.WNOHANG) == (0, 0):
            time.sleep(0.01)
    os._exit(0)


child = 0
signal.signal(signal.SIGTERM, note_and_exit)
parent = os.getpid()
child = os.fork()
if child:
    path = os.path.join(directory, f"{parent}.child")
    with open(path + ".tmp", "w") as f:
        f.write(str(child))
    os.rename(path + ".tmp", path)  # whole, or not there yet
deadline = time.monotonic() + 120  # never outlive a broken test by much
while time.monotonic() < deadline:
    if child == 0 and os.getppid() != parent:
        break
    time.sleep(0.02)
