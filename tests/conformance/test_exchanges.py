"""Framing: methods, bodies both ways, keep-alive, pipelining, streaming."""

from __future__ import annotations

import hashlib

import pytest
from conformance_wsgi import HELLO, STREAM_CHUNKS, pattern_sha256

from conformance import wire
from conformance.conftest import Served

LARGE = 8 * 1024 * 1024


@pytest.mark.exchange("get")
def test_get_hello(served: Served) -> None:
    with served.httpx_client() as client:
        response = client.get("/hello")
    assert response.status_code == 200
    assert response.content == HELLO
    assert response.headers["content-length"] == "13"


def assert_in_step(conn: wire.Connection, response: wire.Response) -> None:
    """No stray byte of ``response`` is left on the connection.

    A server that keeps the connection open must answer the next request
    from a clean start; one that said ``Connection: close`` must close
    without sending anything more.
    """
    if response.closes:
        assert conn.at_eof(), "bytes after a response that closes"
    else:
        after = conn.request("GET", "/hello")
        assert (after.status, after.body) == (200, HELLO)


@pytest.mark.exchange("head")
def test_head_has_get_headers_and_no_body(served: Served) -> None:
    got = served.request("GET", "/hello")
    with served.connect() as conn:
        head = conn.request("HEAD", "/hello")
        # Body bytes after the HEAD answer would show up here.
        assert_in_step(conn, head)

    assert head.status == got.status == 200
    assert head.header("Content-Length") == got.header("Content-Length") == "13"
    assert head.header("Content-Type") == got.header("Content-Type")


@pytest.mark.exchange("post_content_length")
def test_post_with_content_length(served: Served) -> None:
    body = b"name=juggler&answer=42"
    headers = [("Content-Type", "application/x-www-form-urlencoded")]

    response = served.request("POST", "/echo", headers=headers, body=body)

    assert response.status == 200
    assert response.json() == {
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "content_type": "application/x-www-form-urlencoded",
        "body": body.decode(),
    }


@pytest.mark.exchange("chunked_request_body")
def test_post_with_chunked_body(served: Served) -> None:
    parts = [b"first part;", b"x" * 5000, b";last"]
    headers = [("Transfer-Encoding", "chunked"), ("Content-Type", "text/plain")]

    with served.connect() as conn:
        response = conn.request(
            "POST", "/echo", headers=headers, body=wire.chunked(parts)
        )
        assert response.status == 200, response.body
        answer = response.json()
        # The zero chunk was consumed, not taken for the next request.
        assert_in_step(conn, response)

    assert answer["body"] == b"".join(parts).decode()
    assert answer["length"] == sum(map(len, parts))
    assert answer["content_type"] == "text/plain"


@pytest.mark.exchange("keepalive")
def test_keepalive_serves_several_requests_on_one_connection(
    served: Served,
) -> None:
    with served.connect() as conn:
        addr, port = served.client_address(conn)
        answers = []
        for method, target, body in [
            ("GET", "/environ/1", None),
            ("POST", "/echo", b"between"),
            ("GET", "/environ/3", None),
        ]:
            answers.append(conn.request(method, target, body=body))
            # Fail here rather than wait for an answer that cannot come.
            assert not answers[-1].closes, answers[-1].headers
        first, second, third = answers

    assert [a.status for a in answers] == [200, 200, 200]
    assert second.json()["body"] == "between"
    # The server saw one peer for both: the same connection.
    for response in (first, third):
        assert response.json()["REMOTE_ADDR"] == addr
        assert response.json().get("REMOTE_PORT", "") == port


@pytest.mark.exchange("pipelining")
def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    requests = [
        wire.build_request("GET", "/environ/one"),
        wire.build_request("POST", "/echo", body=b"two"),
        wire.build_request("GET", "/hello"),
    ]
    with served.connect() as conn:
        conn.send(b"".join(requests))
        answers = []
        for _ in requests:
            answers.append(conn.read_response())
            assert not answers[-1].closes, answers[-1].headers

    assert [a.status for a in answers] == [200, 200, 200]
    assert answers[0].json()["PATH_INFO"] == "/environ/one"
    assert answers[1].json()["body"] == "two"
    assert answers[2].body == HELLO


@pytest.mark.exchange("stream")
def test_streamed_response_is_chunked_on_http11(served: Served) -> None:
    with served.connect() as conn:
        response = conn.request("GET", "/stream")
        assert_in_step(conn, response)

    assert response.status == 200
    assert response.chunked, response.headers
    assert response.header("Content-Length") is None
    assert response.body == b"".join(STREAM_CHUNKS)


@pytest.mark.exchange("keepalive_after_stream")
def test_connection_stays_open_after_a_streamed_response(served: Served) -> None:
    with served.connect() as conn:
        response = conn.request("GET", "/stream")
        assert not response.closes, response.headers
        after = conn.request("GET", "/hello")

    assert (after.status, after.body) == (200, HELLO)


@pytest.mark.exchange("stream_http10")
def test_streamed_response_to_http10_ends_with_the_connection(
    served: Served,
) -> None:
    with served.connect() as conn:
        response = conn.request("GET", "/stream", version="HTTP/1.0")
        closed = conn.at_eof()

    assert response.status == 200
    # HTTP/1.0 has no chunked coding: the end of the body is the close.
    assert not response.chunked
    assert response.body == b"".join(STREAM_CHUNKS)
    assert closed


@pytest.mark.exchange("large_response")
def test_large_response_arrives_intact(served: Served) -> None:
    digest = hashlib.sha256()
    with (
        served.httpx_client() as client,
        client.stream("GET", f"/large?size={LARGE}") as response,
    ):
        for block in response.iter_raw():
            digest.update(block)
        assert response.status_code == 200
        assert response.headers["content-length"] == str(LARGE)
        assert response.num_bytes_downloaded == LARGE

    assert digest.hexdigest() == pattern_sha256(LARGE)


@pytest.mark.exchange("large_request_body")
def test_large_request_body_arrives_intact(served: Served) -> None:
    body = bytes(range(256)) * (LARGE // 256)
    headers = [("Content-Type", "application/octet-stream")]

    response = served.request("POST", "/echo", headers=headers, body=body)

    assert response.status == 200, response.body
    answer = response.json()
    assert answer["length"] == LARGE
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()
