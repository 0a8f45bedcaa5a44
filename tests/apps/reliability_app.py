"""The app of the reliability scenarios: says which worker answered.

``/``             200, ``X-Pid`` header and the pid as the body
``/sleep?s=3``    the same after sleeping that many seconds (a long request)
``/spawn?n=3``    starts ``n`` child processes that sleep, then answers
"""

import os
import subprocess
import sys
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    path = environ.get("PATH_INFO", "/")
    if path == "/sleep":
        time.sleep(float(query.get("s", ["1"])[0]))
    elif path == "/spawn":
        for _ in range(int(query.get("n", ["1"])[0])):
            # Grandchildren of the supervisor: they must not outlive it.
            subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(60)"],
                close_fds=True,
            )
    body = str(os.getpid()).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("X-Pid", str(os.getpid())),
        ],
    )
    return [body]
