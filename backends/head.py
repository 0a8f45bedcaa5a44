"""The response a WSGI app gives, guarded, for servers that send it as given.

Two things waitress, werkzeug and meinheld leave to the app:

- HEAD. WSGI leaves HEAD to the app, and most apps answer it like GET.
  gunicorn, gevent and our wsgiref drop the body; waitress, werkzeug and
  meinheld send it, and behind a proxy that keeps upstream connections
  alive (nginx with ``keepalive``) those bytes are then read as the start
  of the next response. The app runs as usual -- so that a lazy app still
  calls ``start_response`` and its iterable is closed -- and the server
  gets an empty body.
- The status and header fields. werkzeug writes them as given, meinheld
  lets CR and NUL through, waitress NUL: a CR or LF taken from user input
  would let a client write headers of its own into the response (response
  splitting). ``start_response`` refuses a name that is not a token and a
  status or value with a control character other than a tab, by raising
  ``ValueError`` in the app; the server answers 500, as it does for any
  app error before the response begins.

It costs one closure and a look at each header field per request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from juggler.backends.base import App

StartResponse = Callable[..., Any]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS = re.compile(r"\d{3} [^\x00-\x08\x0a-\x1f\x7f]*")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def guard_response(app: App) -> App:
    """Wrap a WSGI ``app``: checked status and fields, no body for HEAD."""

    def guarded_app(
        environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        def checked_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            check_response_head(status, headers)
            return start_response(status, headers, exc_info)

        body = app(environ, checked_start_response)
        if environ.get("REQUEST_METHOD") != "HEAD":
            return body  # type: ignore[no-any-return]
        return _Discarded(body)

    return guarded_app


def check_response_head(status: str, headers: Iterable[tuple[str, str]]) -> None:
    """Raise ValueError for a status or a header field that would break HTTP."""
    if type(status) is not str or not _STATUS.fullmatch(status):
        raise ValueError(f"invalid status {status!r} (expected like '200 OK')")
    for name, value in headers:
        if type(name) is not str or not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid response header name {name!r}")
        if type(value) is not str or _CONTROL.search(value):
            raise ValueError(f"invalid value for response header {name}: {value!r}")


class _Discarded:
    """An app's body, run to its end and thrown away."""

    def __init__(self, body: Iterable[bytes]) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        for _ in self._body:
            pass
        return iter(())

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
