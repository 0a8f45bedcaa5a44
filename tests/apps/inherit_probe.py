"""An app that starts a grandchild keeping every descriptor it can inherit.

``/spawn`` starts ``sleep 30`` with ``close_fds=False``, so that only the
close-on-exec flag stands between the grandchild and the worker's
descriptors, and answers its pid. The test reads the grandchild's
``/proc/PID/fd`` and ``/proc/PID/environ`` from outside, then kills it.
"""

import os
import subprocess


def app(environ, start_response):
    body = str(os.getpid()).encode()
    if environ.get("PATH_INFO") == "/spawn":
        child = subprocess.Popen(["sleep", "30"], close_fds=False)
        body = str(child.pid).encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]
