"""--forwarded-allow-ips: X-Forwarded-* believed from the proxies named only.

The wrappers are called in-process; tests/reliability/test_hostile_http.py
sends the fields to a real runner on every backend.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any

import harness
import pytest

from juggler.runner.forwarded import TrustedProxies, forwarded_scheme, wrap_forwarded

SEEN: list[dict[str, Any]] = []


def _wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    SEEN.append(dict(environ))
    return [b""]


async def _asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    SEEN.append(dict(scope))


def _environ(peer: str, **headers: str) -> dict[str, Any]:
    environ = {"REMOTE_ADDR": peer, "REMOTE_PORT": "4000", "wsgi.url_scheme": "http"}
    environ.update({f"HTTP_{key.upper()}": value for key, value in headers.items()})
    return environ


def _through_wsgi(proxies: str, environ: dict[str, Any]) -> dict[str, Any]:
    SEEN.clear()
    wrap_forwarded(_wsgi, "wsgi", TrustedProxies.parse(proxies))(environ, None)
    return SEEN[0]


@pytest.mark.parametrize(
    ("text", "peer", "trusted"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("127.0.0.1", "", False),  # a UNIX peer
        ("127.0.0.1, unix", "", True),
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "11.1.2.3", False),
        ("::1", "::1", True),
        ("*", "203.0.113.9", True),
        ("", "127.0.0.1", False),
        ("127.0.0.1", "not an address", False),
    ],
)
def test_trusts(text: str, peer: str, trusted: bool) -> None:
    assert TrustedProxies.parse(text).trusts(peer) is trusted


def test_empty_list_is_off() -> None:
    assert not TrustedProxies.parse("").enabled
    assert not TrustedProxies.parse(" , ").enabled
    assert TrustedProxies.parse("unix").enabled


def test_bad_entry_is_named() -> None:
    with pytest.raises(ValueError, match=re.escape('"10.0.0.300"')):
        TrustedProxies.parse("127.0.0.1,10.0.0.300")


@pytest.mark.parametrize(
    ("forwarded_for", "client"),
    [
        ("203.0.113.9", "203.0.113.9"),
        # The rightmost entry that is no trusted proxy: the left may be forged.
        ("1.1.1.1, 203.0.113.9", "203.0.113.9"),
        ("1.1.1.1, 203.0.113.9, 10.0.0.2", "203.0.113.9"),
        ("10.0.0.3, 10.0.0.2", "10.0.0.3"),  # all trusted: the first
        ("unknown", None),
        (" , ", None),
    ],
)
def test_client_is_the_rightmost_untrusted_entry(
    forwarded_for: str, client: str | None
) -> None:
    proxies = TrustedProxies.parse("127.0.0.1,10.0.0.0/8")
    assert proxies.client(forwarded_for) == client


@pytest.mark.parametrize(
    ("value", "scheme"),
    [("https", "https"), ("HTTPS ", "https"), ("http, https", "https"), ("ftp", None)],
)
def test_forwarded_scheme(value: str, scheme: str | None) -> None:
    assert forwarded_scheme(value) == scheme


def test_wsgi_from_a_trusted_peer() -> None:
    environ = _environ(
        "127.0.0.1", x_forwarded_for="203.0.113.9", x_forwarded_proto="https"
    )
    seen = _through_wsgi("127.0.0.1", environ)
    assert seen["REMOTE_ADDR"] == "203.0.113.9"
    assert "REMOTE_PORT" not in seen
    assert seen["wsgi.url_scheme"] == "https"


def test_wsgi_from_an_untrusted_peer_changes_nothing() -> None:
    environ = _environ(
        "127.0.0.2", x_forwarded_for="203.0.113.9", x_forwarded_proto="https"
    )
    seen = _through_wsgi("127.0.0.1", dict(environ))
    assert seen == environ


def test_asgi_from_a_trusted_and_an_untrusted_peer() -> None:
    app = wrap_forwarded(_asgi, "asgi", TrustedProxies.parse("unix"))
    headers = [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https")]
    SEEN.clear()
    for client in (None, ("127.0.0.1", 5000)):
        scope = {"type": "http", "client": client, "scheme": "http", "headers": headers}
        asyncio.run(app(scope, None, None))
    trusted, untrusted = SEEN
    assert (trusted["client"], trusted["scheme"]) == (("203.0.113.9", 0), "https")
    assert (untrusted["client"], untrusted["scheme"]) == (("127.0.0.1", 5000), "http")


def test_bad_option_is_a_usage_error() -> None:
    done = harness.run_cli(
        ["serve", "--forwarded-allow-ips", "10.0.0.300", "hello:app"]
    )
    assert done.returncode == 2
    assert '--forwarded-allow-ips: "10.0.0.300" is not an address' in done.stderr
