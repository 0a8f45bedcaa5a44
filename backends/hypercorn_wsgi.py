"""WSGI apps under hypercorn: the contract's environ, the head limits and
checked response heads.

hypercorn calls the adapter as ``(scope, receive, send, sync_spawn,
call_soon)``: ``sync_spawn`` runs a function in the loop's default executor
and ``call_soon`` runs a coroutine on the loop from that thread, waiting for
its result.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any
from urllib.parse import unquote_to_bytes

from juggler.backends.base import App, HeadLimits
from juggler.backends.head import check_response_head
from juggler.backends.http11_limits import HttpError, log_refusal, refuse, scope_refusal

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType]


class _BodyTooLarge(Exception):
    pass


class WsgiAdapter:
    """A WSGI app in hypercorn's worker threads, with the contract's environ.

    Known shortcoming: the request body is read whole, up to
    ``max_body_size`` (413 beyond), before the app runs. Streaming it would
    take a ``wsgi.input`` whose reads fetch the next message through
    ``call_soon(receive)``, with its own buffering for ``readline``.
    """

    def __init__(
        self,
        app: App,
        max_body_size: int,
        unix_path: str | None,
        limits: HeadLimits,
    ) -> None:
        self.app = app
        self.max_body_size = max_body_size
        self.limits = limits
        self.unix = unix_path is not None

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send, sync_spawn, call_soon)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close"})
        # A lifespan scope returns at once: hypercorn then runs without one.

    async def _http(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        error = scope_refusal(scope, self.limits)
        if error is not None:
            log_refusal(error, scope.get("client"))
            await refuse(send, error, scope["method"])
            return
        try:
            body = await _read_body(receive, self.max_body_size)
        except _BodyTooLarge:
            too_large = HttpError(413, f"body over {self.max_body_size} bytes")
            await refuse(send, too_large, scope["method"])
            return
        if body is None:
            return  # the client left before its body was complete
        environ = self.environ(scope, body)
        response = _Response(lambda message: call_soon(send, message))
        await sync_spawn(self._run, environ, response)

    def _run(self, environ: dict[str, Any], response: _Response) -> None:
        """Call the app and send what it yields; runs in a worker thread."""
        result: Iterable[bytes] = self.app(environ, response.start_response)
        try:
            for chunk in result:
                response.write(chunk)
            response.finish()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def environ(self, scope: Scope, body: bytes) -> dict[str, Any]:
        """PEP 3333's environ for one request, from hypercorn's scope."""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope["method"],
            "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin-1"),
            # From the raw path, so that %2F and non-UTF-8 escapes survive
            # as PEP 3333 wants them: the decoded bytes read as latin-1.
            "PATH_INFO": unquote_to_bytes(scope["raw_path"]).decode("latin-1"),
            "QUERY_STRING": scope["query_string"].decode("latin-1"),
            "SERVER_PROTOCOL": "HTTP/" + scope["http_version"],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope["scheme"],
            "wsgi.input": io.BytesIO(body),
            # The body is read whole: reading to the end is always safe,
            # with or without Content-Length (a chunked request has none).
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        environ.update(self._addresses(scope))
        environ.update(_header_fields(scope["headers"]))
        return environ

    def _addresses(self, scope: Scope) -> dict[str, str]:
        if self.unix:
            return {"SERVER_NAME": "localhost", "SERVER_PORT": "80", "REMOTE_ADDR": ""}
        server, client = scope["server"], scope["client"]
        return {
            "SERVER_NAME": server[0],
            "SERVER_PORT": str(server[1]),
            "REMOTE_ADDR": client[0],
            "REMOTE_PORT": str(client[1]),
        }


def _header_fields(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """CONTENT_TYPE, CONTENT_LENGTH and HTTP_* from the request's headers.

    A name with an underscore is dropped: ``X_Forwarded_For`` would land on
    the same key as ``X-Forwarded-For`` and could pass for a header the
    proxy in front vouches for. Repeated fields join with a comma (cookies
    with a semicolon, as RFC 6265 asks).
    """
    fields: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        if "_" in name or name.startswith(":"):
            continue
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = raw_value.decode("latin-1")
        if key in fields:
            joiner = "; " if key == "HTTP_COOKIE" else ","
            value = fields[key] + joiner + value
        fields[key] = value
    return fields


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when the client goes away first."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            raise _BodyTooLarge
        if not message.get("more_body", False):
            return bytes(body)


class _Response:
    """start_response and the body of one WSGI response, sent as ASGI events.

    The head goes out with the first non-empty chunk, or when the app's
    iterable ends, so an app may still change its status (start_response
    with exc_info) until then, as PEP 3333 allows.
    """

    def __init__(self, send: Callable[[Message], object]) -> None:
        self._send = send
        self._status: int | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._started = False

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self._started:
            raise exc_info[1].with_traceback(exc_info[2])
        if exc_info is None and self._status is not None:
            raise RuntimeError("start_response called twice without exc_info")
        # A CR, LF or NUL would make h11 drop the connection unanswered.
        check_response_head(status, headers)
        self._status = int(status.split(" ", 1)[0])
        self._headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers
        ]
        return self.write

    def write(self, data: bytes) -> None:
        if data:
            self._start()
            self._send({"type": "http.response.body", "body": data, "more_body": True})

    def finish(self) -> None:
        self._start()
        self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def _start(self) -> None:
        if self._started:
            return
        if self._status is None:
            raise RuntimeError("the WSGI app returned without calling start_response")
        self._started = True
        self._send(
            {
                "type": "http.response.start",
                "status": self._status,
                "headers": self._headers,
            }
        )
