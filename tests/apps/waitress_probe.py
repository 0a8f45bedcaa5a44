"""A WSGI app that shows the backend tests what the server gave it.

Routes:
  /            13 bytes with a Content-Length
  /environ     the connection-related environ keys, as JSON
  /echo        the request body, echoed
  /raise       raises RuntimeError
  /block?NAME  creates $PROBE_DIR/NAME.started, then holds the request until
               $PROBE_DIR/NAME.release exists (a file barrier the test
               controls), and answers "released"
"""

import json
import os
import time

HELLO = b"Hello, world!"
ENVIRON_KEYS = (
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "SERVER_NAME",
    "SERVER_PORT",
    "HTTP_X_FORWARDED_FOR",
)
# The app gives up on a barrier nobody releases, so that a broken test
# cannot leave a worker thread behind forever.
BARRIER_LIMIT = 60.0


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/environ":
        body = json.dumps({key: environ.get(key) for key in ENVIRON_KEYS}).encode()
    elif path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
    elif path == "/raise":
        raise RuntimeError("probe app raised on purpose")
    elif path == "/block":
        body = _block(environ["QUERY_STRING"])
    else:
        body = HELLO
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _block(name):
    directory = os.environ["PROBE_DIR"]
    with open(os.path.join(directory, f"{name}.started"), "w"):
        pass
    release = os.path.join(directory, f"{name}.release")
    deadline = time.monotonic() + BARRIER_LIMIT
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return b"released"
