"""waitress's request parser with the head limits (``HeadLimits``) and a
strict parse of the head (``http11_strict``).

Built on first use, like the adapter's other waitress classes: this module
must import without waitress installed.
"""

from __future__ import annotations

import logging
import os
import time
from http import HTTPStatus
from typing import Any

from juggler.backends.base import HeadLimits
from juggler.backends.http11 import HttpError, PartialHead
from juggler.backends.http11_strict import refusal

log = logging.getLogger("juggler.backends.waitress")


def define_parser_class(limits: HeadLimits) -> type[Any]:
    """waitress's request parser, with the head limits.

    waitress checks only the size of the whole head. A complete head is
    checked in ``parse_header``, strictly (``http11_strict``); one still
    arriving is checked after each read (waitress reads 8 KiB at a time), so
    a line over its limit is refused as soon as it is, not at waitress's
    total bound.
    """
    from waitress.parser import HTTPRequestParser
    from waitress.utilities import Error

    class RefusedHead(Error):  # type: ignore[misc]
        """A refused head: waitress answers an Error with its code and closes."""

        def __init__(self, error: HttpError) -> None:
            super().__init__(error.detail)
            self.code = error.status
            self.reason = HTTPStatus(error.status).phrase

    class LimitedParser(HTTPRequestParser):  # type: ignore[misc]
        _scan: PartialHead | None = None

        def __init__(self, adj: Any) -> None:
            super().__init__(adj)
            # A channel makes its parser when a request's first bytes come:
            # the head's deadline runs from here (see waitress.py).
            self.started = time.monotonic()

        def received(self, data: bytes) -> int:
            consumed: int = super().received(data)
            if not (self.completed or self.headers_finished):
                try:
                    self._check_partial()
                except HttpError as exc:
                    self._refuse(exc)
            if isinstance(self.error, RefusedHead):
                return len(data)  # nothing after it is read as a request
            return consumed

        def parse_header(self, header_plus: bytes) -> None:
            # Strictly, before waitress's own parse: waitress takes a
            # Content-Length beside a Transfer-Encoding, two chunked
            # codings, or a folded line, where a proxy may frame otherwise.
            error = refusal(header_plus, limits)
            if error is not None:
                self._refuse(error)
                return
            super().parse_header(header_plus)

        def _check_partial(self) -> None:
            head: bytes = self.header_plus
            if self._scan is None:
                # Empty lines before a request are allowed; waitress strips
                # them once the head is complete.
                start = len(head) - len(head.lstrip(b"\r\n"))
                if start == len(head):
                    return
                self._scan = PartialHead(limits, start)
            self._scan.check(head)

        def _refuse(self, error: HttpError) -> None:
            # What waitress does for its own 431: a stand-in request line
            # gives the error response the fields it needs.
            HTTPRequestParser.parse_header(self, b"GET / HTTP/1.1\r\n")
            self.error = RefusedHead(error)
            self.completed = True
            log.info("rejected: %s pid=%d", error, os.getpid())

    return LimitedParser
