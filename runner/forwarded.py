"""The client behind a proxy, believed only from the proxies named.

Behind a proxy (nginx), the peer a worker sees is the proxy; the client is
in X-Forwarded-For, and the scheme it used in X-Forwarded-Proto. Any client
can send those fields too, so they are believed only from the peers
``--forwarded-allow-ips`` names (default ``127.0.0.1``, as in gunicorn and
uvicorn). From such a peer, the app sees the forwarded client as
``REMOTE_ADDR`` (ASGI: ``client``, with port 0; WSGI drops ``REMOTE_PORT``,
which was the proxy's) and the forwarded scheme as ``wsgi.url_scheme``
(``scheme``). From any other peer nothing changes, and the fields reach the
app as they were sent, like any other header.

The client is the rightmost X-Forwarded-For entry that is not itself a
trusted proxy: each proxy appends the peer it saw, so what lies left of
the first untrusted entry may be forged. An entry that is not an IP
address changes nothing.

The list holds addresses and networks (``10.0.0.0/8``), ``unix`` for
peers on a UNIX socket (a proxy on the same host) and ``*`` for every
peer; an empty list turns the feature off. Like the access log, it is one
wrapper for every backend; a request without either field costs two
lookups.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from juggler.backends.base import App, Interface

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT = "127.0.0.1"
SCHEMES = frozenset(("http", "https"))
# Peers remembered as trusted or not. The proxies in front are a few
# addresses; the bound only keeps a stream of strangers from growing it.
_CACHE_SIZE = 256


@dataclass(frozen=True)
class TrustedProxies:
    """The peers whose X-Forwarded-* fields are believed."""

    networks: tuple[Network, ...] = ()
    unix: bool = False
    everyone: bool = False
    # A cache of trusts(), not part of the value.
    _seen: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """From ``--forwarded-allow-ips``; ValueError names a bad entry."""
        entries = [entry.strip() for entry in text.split(",") if entry.strip()]
        networks = []
        for entry in entries:
            if entry in ("*", "unix"):
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(
                    f'"{entry}" is not an address, a network, "unix" or "*"'
                ) from None
        return cls(tuple(networks), "unix" in entries, "*" in entries)

    @property
    def enabled(self) -> bool:
        return bool(self.networks or self.unix or self.everyone)

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (an IP, or ""/None for a UNIX peer) is trusted."""
        if self.everyone:
            return True
        if not peer:
            return self.unix
        known = self._seen.get(peer)
        if known is None:
            known = self._address_trusted(peer)
            if len(self._seen) < _CACHE_SIZE:
                self._seen[peer] = known
        return known

    def _address_trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def client(self, forwarded_for: str) -> str | None:
        """The client an X-Forwarded-For value names, or None."""
        entries = [entry.strip() for entry in forwarded_for.split(",")]
        entries = [entry for entry in entries if entry]
        chosen = next(
            (entry for entry in reversed(entries) if not self.trusts(entry)),
            entries[0] if entries else None,
        )
        if chosen is None:
            return None
        try:
            return str(ipaddress.ip_address(chosen))
        except ValueError:
            return None


def forwarded_scheme(value: str) -> str | None:
    """The scheme the nearest proxy set (the last one given), if known."""
    last = value.rsplit(",", 1)[-1].strip().lower()
    return last if last in SCHEMES else None


def wrap_forwarded(app: App, interface: Interface, proxies: TrustedProxies) -> App:
    """Return ``app`` wrapped to believe X-Forwarded-* from ``proxies``."""
    if interface == "asgi":
        return _wrap_asgi(app, proxies)
    return _wrap_wsgi(app, proxies)


def _wrap_wsgi(app: App, proxies: TrustedProxies) -> App:
    def app_behind_proxies(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if (
            "HTTP_X_FORWARDED_FOR" in environ or "HTTP_X_FORWARDED_PROTO" in environ
        ) and proxies.trusts(environ.get("REMOTE_ADDR")):
            _forward_environ(environ, proxies)
        return app(environ, start_response)  # type: ignore[no-any-return]

    return app_behind_proxies


def _forward_environ(environ: dict[str, Any], proxies: TrustedProxies) -> None:
    client = proxies.client(environ.get("HTTP_X_FORWARDED_FOR", ""))
    if client is not None:
        environ["REMOTE_ADDR"] = client
        environ.pop("REMOTE_PORT", None)
    scheme = forwarded_scheme(environ.get("HTTP_X_FORWARDED_PROTO", ""))
    if scheme is not None:
        environ["wsgi.url_scheme"] = scheme


def _wrap_asgi(app: App, proxies: TrustedProxies) -> App:
    async def app_behind_proxies(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            if proxies.trusts(peer[0] if peer else None):
                _forward_scope(scope, proxies)
        await app(scope, receive, send)

    return app_behind_proxies


def _forward_scope(scope: MutableMapping[str, Any], proxies: TrustedProxies) -> None:
    forwarded_for: list[str] = []
    proto = None
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded_for.append(value.decode("latin-1"))
        elif name == b"x-forwarded-proto":
            proto = value.decode("latin-1")
    client = proxies.client(",".join(forwarded_for)) if forwarded_for else None
    if client is not None:
        scope["client"] = (client, 0)
    scheme = forwarded_scheme(proto) if proto is not None else None
    if scheme is not None:
        if scope["type"] == "websocket":
            scheme = "wss" if scheme == "https" else "ws"
        scope["scheme"] = scheme
