"""A process that ignores SIGTERM, to test the SIGKILL after graceful_timeout."""

import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("stubborn: ignoring SIGTERM", flush=True)
deadline = time.monotonic() + 120  # never outlive a broken test by much
while time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(0)
