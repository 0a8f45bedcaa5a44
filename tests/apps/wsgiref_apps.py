"""Apps for the wsgiref backend's tests.

WSGIREF_HITS names a file that gets one line per request an app saw (its
PATH_INFO), so a test can prove that a smuggled request never reached the
app. WSGIREF_BARRIER names a directory: ``barrier`` writes ``started`` there
and answers only once ``release`` exists.
"""

import json
import os
import time

BARRIER_LIMIT = 60.0


def _record(line):
    path = os.environ.get("WSGIREF_HITS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _json(start_response, payload, status="200 OK"):
    body = json.dumps(payload).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def echo(environ, start_response):
    """The request as the app saw it; ?read=none leaves the body unread."""
    _record(environ["PATH_INFO"])
    stream = environ["wsgi.input"]
    mode = environ["QUERY_STRING"]
    if mode == "read=none":
        body = b""
    elif mode == "read=lines":
        body = b"|".join(stream)
    elif mode == "read=small":
        parts = []
        while part := stream.read(3):
            parts.append(part)
        body = b"".join(parts)
    else:
        body = stream.read()
    keys = [k for k in environ if k.isupper()]
    payload = {k: environ[k] for k in keys}
    payload["body"] = body.decode("latin-1")
    payload["wsgi.multithread"] = environ["wsgi.multithread"]
    payload["wsgi.version"] = list(environ["wsgi.version"])
    return _json(start_response, payload)


def stream(environ, start_response):
    """A body of unknown length: chunked on HTTP/1.1."""
    _record(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])

    def chunks():
        for i in range(3):
            yield f"part{i};".encode()

    return chunks()


def status(environ, start_response):
    """Answers the status named in the path, e.g. /status/204, with a body."""
    code = environ["PATH_INFO"].rsplit("/", 1)[1]
    start_response(f"{code} Whatever", [("Content-Length", "4")])
    return [b"body"]


def bad_header(environ, start_response):
    start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: injected=1")])
    return [b"never sent"]


def bad_status(environ, start_response):
    start_response("200OK", [])
    return [b"never sent"]


def boom(environ, start_response):
    _record(environ["PATH_INFO"])
    raise RuntimeError("boom from the app")


def boom_late(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def chunks():
        yield b"first"
        raise RuntimeError("boom after the head")

    return chunks()


class _Closing:
    def __init__(self, path):
        self.path = path

    def __iter__(self):
        yield b"closing"

    def close(self):
        _record("closed " + self.path)


def closing(environ, start_response):
    start_response("200 OK", [])
    return _Closing(environ["PATH_INFO"])


def writer(environ, start_response):
    """Uses the legacy write() callable, then returns more."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written;")
    return [b"returned"]


def too_long(environ, start_response):
    """Promises 4 bytes and sends 10."""
    start_response("200 OK", [("Content-Length", "4")])
    return [b"0123456789"]


def files(environ, start_response):
    """Serves this very file through wsgi.file_wrapper."""
    size = os.path.getsize(__file__)
    start_response("200 OK", [("Content-Length", str(size))])
    return environ["wsgi.file_wrapper"](open(__file__, "rb"))


def barrier(environ, start_response):
    """Holds the request until the test creates the release file."""
    directory = os.environ["WSGIREF_BARRIER"]
    with open(os.path.join(directory, "started"), "a") as f:
        f.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + BARRIER_LIMIT
    release = os.path.join(directory, "release")
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _json(start_response, {"released": os.path.exists(release)})


def router(environ, start_response):
    """Dispatches on the first path segment: /echo/..., /barrier, ..."""
    name = environ["PATH_INFO"].split("/")[1] or "echo"
    return ROUTES.get(name, echo)(environ, start_response)


ROUTES = {
    "echo": echo,
    "stream": stream,
    "status": status,
    "bad_header": bad_header,
    "bad_status": bad_status,
    "boom": boom,
    "boom_late": boom_late,
    "closing": closing,
    "writer": writer,
    "too_long": too_long,
    "files": files,
    "barrier": barrier,
}
