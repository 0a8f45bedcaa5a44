"""The demo app: answers with the pid of the worker that served it.

Run ``make demo`` and ``curl http://127.0.0.1:8000/`` a few times: the pid
changes as the kernel hands connections to the different workers, all of
them serving the one socket that juggler bound.
"""

import os


def app(environ, start_response):
    body = f"Hello from juggler worker pid {os.getpid()}\n".encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]
