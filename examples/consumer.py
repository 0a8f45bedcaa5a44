"""The stack example's queue consumer: a plain long-running process.

It takes job names from the Redis list ``jobs`` and stores a result for
each. juggler watches it like any other process: it is respawned if it
dies, and stopped with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys

from resp import Redis


def main() -> int:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    redis = Redis(os.environ["REDIS_SOCKET"])
    print(f"consumer: waiting for jobs, pid {os.getpid()}", flush=True)
    while not stopping:
        # A short timeout, so that a SIGTERM is acted on within a second.
        job = redis.call("BRPOP", "jobs", "1")
        if isinstance(job, list):
            name = str(job[1])
            redis.call("SET", f"result:{name}", name.upper())
    redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
