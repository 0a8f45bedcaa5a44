"""An sd_notify speaker that stays silent the first times it runs.

``late_ready.py COUNTER SILENT``: the first SILENT runs (counted in the file
COUNTER) never send READY=1; later runs send it at once. Every run then
waits until it is stopped, at most two minutes.
"""

import os
import socket
import sys
import time

counter, silent = sys.argv[1], int(sys.argv[2])
with open(counter, "a+") as f:
    f.seek(0)
    runs = len(f.read())
    f.write("x")
if runs >= silent:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
deadline = time.monotonic() + 120  # never outlive a broken test by much
while time.monotonic() < deadline:
    time.sleep(0.05)
