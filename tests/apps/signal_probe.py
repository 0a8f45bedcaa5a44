"""A process and its child in one process group, both noting SIGUSR1.

``signal_probe.py DIR``: each writes ``DIR/<pid>.usr1`` when it receives
SIGUSR1, and ``DIR/<pid>.child`` names the child of the parent <pid>.
"""

import os
import signal
import sys
import time

directory = sys.argv[1]


def note(signum, frame):
    with open(os.path.join(directory, f"{os.getpid()}.usr1"), "w"):
        pass


signal.signal(signal.SIGUSR1, note)
parent = os.getpid()
child = os.fork()
if child:
    with open(os.path.join(directory, f"{parent}.child"), "w") as f:
        f.write(str(child))
deadline = time.monotonic() + 120
while time.monotonic() < deadline and os.getppid() != 1:
    time.sleep(0.05)
