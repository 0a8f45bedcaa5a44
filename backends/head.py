"""HEAD answered without a body, for servers that send whatever the app
returns.

WSGI leaves HEAD to the app, and most apps answer it like GET. gunicorn,
gevent and our wsgiref drop the body; waitress, werkzeug and meinheld send
it, and behind a proxy that keeps upstream connections alive (nginx with
``keepalive``) those bytes are then read as the start of the next response.
The wrapper below runs the app as usual -- so that a lazy app still calls
``start_response`` and its iterable is closed -- and hands the server an
empty body. It costs one dict lookup per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from juggler.backends.base import App


def head_without_body(app: App) -> App:
    """Wrap a WSGI ``app`` so that HEAD responses carry no body."""

    def app_answering_head(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        body = app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "HEAD":
            return body  # type: ignore[no-any-return]
        return _Discarded(body)

    return app_answering_head


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
