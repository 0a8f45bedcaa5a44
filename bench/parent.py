"""The limit: bind a socket, spawn N workers on it, wait; nothing else.

``python -m bench.parent N (unix:PATH|HOST:PORT) CMD...`` where CMD has a
``{fd}`` placeholder for the descriptor. No respawn, no readiness, no
control channel: whatever juggler costs on top of this is its own.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys


def bind(where: str) -> socket.socket:
    if where.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(where[5:])
    else:
        host, port = where.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    sock.listen(2048)
    return sock


def main(argv: list[str]) -> int:
    count, where, *template = argv
    sock = bind(where)
    fd = sock.fileno()
    cmd = [arg.replace("{fd}", str(fd)) for arg in template]
    workers = [subprocess.Popen(cmd, pass_fds=(fd,)) for _ in range(int(count))]
    # Blocked only now: a signal mask is inherited, and the workers must
    # keep SIGTERM. One arriving earlier ends this parent, and the runner
    # workers follow their parent out.
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signal.sigwait(stop)
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
