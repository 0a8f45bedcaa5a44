"""A WSGI app that shows the gevent and meinheld tests what they were given.

Routes:
  /            13 bytes with a Content-Length
  /environ     the address keys of the environ, as JSON (null when absent)
  /echo        the request body, echoed (Content-Length or chunked)
  /length      the length of the request body, read in full
  /bytes?N     N bytes of "z"
  /raise       raises RuntimeError
  /patched     the module that socket.socket comes from (monkey-patching)
  /block?DIR   creates DIR/started, then holds the request until
               DIR/release exists (a file barrier the test controls)
"""

import json
import os
import socket
import time

HELLO = b"Hello, world!"
ENVIRON_KEYS = ("REMOTE_ADDR", "REMOTE_PORT", "SERVER_NAME", "SERVER_PORT")
# A barrier nobody releases ends anyway, so a broken test leaves no request
# hanging in the worker.
BARRIER_LIMIT = 60.0


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/environ":
        body = json.dumps({key: environ.get(key) for key in ENVIRON_KEYS}).encode()
    elif path == "/echo":
        body = _read_body(environ)
    elif path == "/length":
        body = str(len(_read_body(environ))).encode()
    elif path == "/bytes":
        body = b"z" * int(environ["QUERY_STRING"])
    elif path == "/raise":
        raise RuntimeError("probe app raised on purpose")
    elif path == "/patched":
        body = socket.socket.__module__.encode()
    elif path == "/block":
        body = _block(environ["QUERY_STRING"])
    else:
        body = HELLO
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _read_body(environ):
    length = environ.get("CONTENT_LENGTH")
    if length:
        return environ["wsgi.input"].read(int(length))
    return environ["wsgi.input"].read()


def _block(directory):
    with open(os.path.join(directory, "started"), "w"):
        pass
    release = os.path.join(directory, "release")
    deadline = time.monotonic() + BARRIER_LIMIT
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            return b"barrier never released"
        time.sleep(0.01)
    return b"released"
