"""The access log's escaping, and its WSGI wrapper called in-process."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pytest

from juggler.runner.accesslog import escape, wrap_access_log


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain /path?q=1", "plain /path?q=1"),
        ("line\nbreak", "line\\x0abreak"),
        ("cr\rtab\t", "cr\\x0dtab\\x09"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("del\x7f", "del\\x7f"),
        ('say "hi"', 'say \\"hi\\"'),
        ("back\\slash", "back\\\\slash"),
        ("café €", "café €"),  # printable non-ASCII is kept as is
    ],
)
def test_escape(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped


def test_escaped_text_stays_on_one_line() -> None:
    forged = 'x" 200 0\n127.0.0.1 "GET /admin HTTP/1.1'
    assert "\n" not in escape(forged)
    assert escape(forged).count('"') == escape(forged).count('\\"')


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("201 Created", [("Content-Length", "5")])
    return [b"ab", b"cde"]


def test_wsgi_wrapper_logs_once_the_body_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {
        "REMOTE_ADDR": "10.0.0.1",
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/p\n",
        "QUERY_STRING": "a=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_USER_AGENT": "agent/1",
    }
    statuses: list[str] = []
    app = wrap_access_log(_app, "wsgi")

    with caplog.at_level(logging.INFO, logger="juggler.access"):
        body = app(environ, lambda status, headers, exc=None: statuses.append(status))
        assert b"".join(body) == b"abcde"
        assert caplog.records == []  # nothing before the server closes it
        body.close()

    assert statuses == ["201 Created"]
    [record] = caplog.records
    line = record.getMessage()
    assert line.startswith('10.0.0.1 "GET /p\\x0a?a=1 HTTP/1.1" 201 5 ')
    assert line.endswith('s "agent/1"')
