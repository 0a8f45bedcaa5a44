"""What the app sees of a request: the environ (or the scope, mapped)."""

from __future__ import annotations

from typing import Any

import pytest

from conformance.conftest import Served
from conformance.limits import ENCODED_SLASH


def _environ(
    served: Served, target: str, headers: list[tuple[str, bytes]] | None = None
) -> dict[str, Any]:
    response = served.request("GET", target, headers=headers or [])
    assert response.status == 200, response.body
    answer: dict[str, Any] = response.json()
    return answer


def _wsgi_str(text: str) -> str:
    """How PEP 3333 carries text from the wire: its bytes read as latin-1."""
    return text.encode("utf-8").decode("latin-1")


@pytest.mark.exchange("environ_fields")
def test_environ_core_fields(served: Served) -> None:
    with served.connect() as conn:
        addr, port = served.client_address(conn)
        response = conn.request("GET", "/environ/core")
    environ = response.json()

    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["PATH_INFO"] == "/environ/core"
    assert environ["SCRIPT_NAME"] == ""
    # PEP 3333: an empty query string "may be empty or absent".
    assert environ.get("QUERY_STRING", "") == ""
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["headers"]["HTTP_HOST"] == "localhost"
    assert environ["REMOTE_ADDR"] == addr
    if port:
        assert environ["REMOTE_PORT"] == port
    else:
        assert "REMOTE_PORT" not in environ


@pytest.mark.exchange("server_address")
def test_server_name_and_port_are_the_listening_address(served: Served) -> None:
    environ = _environ(served, "/environ")

    if served.unix_path is None:
        address = served.runner.address
        assert isinstance(address, tuple)
        host, port = address
        assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == (host, str(port))
    else:
        assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "80")
    if served.target.interface == "asgi" and served.unix_path is not None:
        assert environ["scope"]["client"] is None
        assert environ["scope"]["server"] == [served.unix_path, None]


@pytest.mark.exchange("query_string")
def test_query_string_is_passed_undecoded(served: Served) -> None:
    query = "a=1&b=two%20words&c=&caf%C3%A9=%E2%82%AC"

    environ = _environ(served, f"/environ/q?{query}")

    assert environ["PATH_INFO"] == "/environ/q"
    assert environ["QUERY_STRING"] == query


@pytest.mark.exchange("percent_encoded_path")
def test_percent_encoded_path_is_decoded(served: Served) -> None:
    environ = _environ(served, "/environ/caf%C3%A9/x%20y")

    assert environ["PATH_INFO"] == _wsgi_str("/environ/café/x y")
    if "RAW_URI" in environ:
        assert environ["RAW_URI"] == "/environ/caf%C3%A9/x%20y"


@pytest.mark.exchange("encoded_slash")
def test_encoded_slash_is_recorded(served: Served) -> None:
    environ = _environ(served, "/environ/a%2Fb?x=1")

    assert environ["PATH_INFO"] in ("/environ/a/b", "/environ/a%2Fb")
    if "RAW_URI" in environ:
        assert environ["RAW_URI"] == "/environ/a%2Fb?x=1"
    # What the server does with %2F is a choice HTTP leaves open; the table
    # records each one's, so that a change of behaviour shows up here.
    recorded = ENCODED_SLASH.get(served.target.name)
    assert recorded == environ["PATH_INFO"], (
        f"record ENCODED_SLASH[{served.target.name!r}] = "
        f"{environ['PATH_INFO']!r} in conformance/limits.py"
    )


@pytest.mark.exchange("non_ascii_headers")
def test_non_ascii_header_values_reach_the_app_as_latin1(served: Served) -> None:
    headers = [
        ("X-Latin", "café".encode("latin-1")),
        ("X-Utf8", "café €".encode()),
        ("X-Plain", b"ascii value"),
    ]

    environ = _environ(served, "/environ/headers", headers)

    got = environ["headers"]
    assert got["HTTP_X_LATIN"] == "café"
    assert got["HTTP_X_UTF8"] == _wsgi_str("café €")
    assert got["HTTP_X_PLAIN"] == "ascii value"


@pytest.mark.exchange("content_headers")
def test_content_type_and_length_are_not_http_headers(served: Served) -> None:
    response = served.request(
        "POST",
        "/environ/post",
        headers=[("Content-Type", "text/plain; charset=utf-8")],
        body=b"12345",
    )
    environ = response.json()

    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert environ["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in environ["headers"]
    assert "HTTP_CONTENT_LENGTH" not in environ["headers"]
