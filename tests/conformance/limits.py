"""What a backend cannot do, and what each one does where HTTP lets it choose.

KNOWN_LIMITS turns an exchange into a strict xfail for one backend (and,
with a third key, one socket family): the limitation shows in every run,
and the test fails the day the limitation disappears, so the entry gets
removed. An entry is written only from a failure that was understood and
traced to the server itself (the same behaviour with the bare server, or
the line of its source that causes it); a failure in our own adapter is a
bug to fix, never an entry here.

Keys: (backend, exchange) or (backend, exchange, family), where the backend
is the target's name (``hypercorn-wsgi`` for hypercorn serving WSGI).
"""

from __future__ import annotations

_WERKZEUG_CLOSES = (
    "werkzeug answers every request with Connection: close, then reads the "
    "connection until the client closes it or the idle timeout ends "
    "(werkzeug/serving.py, run_wsgi: the loop that discards unread input), "
    "so a second request on the connection gets neither an answer nor a close."
)

_MEINHELD_HEAD = (
    "meinheld's head limits are fixed in its C parser (meinheld/server/"
    "request.h: a target up to 8 KiB, 128 fields, a name or value up to "
    "8 KiB each, 80 KiB in all) and cannot be set, so {what} is served "
    "(200); past its own limits it answers 400. See backends/meinheld.py."
)

KNOWN_LIMITS: dict[tuple[str, ...], str] = {
    ("meinheld", "limit_request_line"): _MEINHELD_HEAD.format(
        what="a request line over 4094 bytes"
    ),
    ("meinheld", "limit_header_count"): _MEINHELD_HEAD.format(
        what="a head of 101 fields"
    ),
    ("meinheld", "limit_header_size"): _MEINHELD_HEAD.format(
        what="a field of 8191 bytes"
    ),
    ("werkzeug", "keepalive"): _WERKZEUG_CLOSES,
    ("werkzeug", "pipelining"): _WERKZEUG_CLOSES,
    ("werkzeug", "keepalive_after_stream"): _WERKZEUG_CLOSES,
    ("waitress", "keepalive_after_stream"): (
        "waitress closes the connection after any HTTP/1.1 response without a "
        "Content-Length (waitress/task.py, build_response_header), so a "
        "streamed response costs a connection."
    ),
}

# What PATH_INFO a server gives for /environ/a%2Fb. WSGI has only the
# decoded path, so most servers cannot tell "a%2Fb" from "a/b"; RAW_URI (or
# ASGI's raw_path) keeps the original where the server provides it.
ENCODED_SLASH: dict[str, str] = {
    "wsgiref": "/environ/a/b",
    "gevent": "/environ/a/b",
    "meinheld": "/environ/a/b",
    "waitress": "/environ/a/b",
    "werkzeug": "/environ/a/b",
    "uvicorn": "/environ/a/b",
    "hypercorn": "/environ/a/b",
    "hypercorn-wsgi": "/environ/a/b",
}
