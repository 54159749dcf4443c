"""The client address behind the gateway, and the ``X-Forwarded-For`` handed on to signing.

Only a request whose peer is one of the configured trusted proxies (the gateway) may say who
its client is; from anyone else an ``X-Forwarded-For`` is ignored, since any client can write
one. The resolved address replaces ``scope["client"]`` (what logs and handlers see), and the
chain to forward — the resolved client, then each trusted hop up to and including the peer —
is kept in ``scope["state"]`` for the sign-in relay, so signing's per-address login limits see
the real client (signing in turn trusts the header from its own configured proxies only).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CHAIN_KEY = "forwarded_for"


def parse_trusted(entries: Sequence[str]) -> list[IPNetwork]:
    """Addresses or networks of trusted proxies; ValueError for ``*`` or anything else."""
    nets = []
    for entry in entries:
        if entry.strip() == "*":
            raise ValueError("'*' would let any client choose its address; name the gateway")
        nets.append(ipaddress.ip_network(entry.strip(), strict=False))
    return nets


class ForwardedFor:
    """Pure ASGI: resolve the client address from trusted proxies' ``X-Forwarded-For``."""

    def __init__(self, app: ASGIApp, *, trusted: Sequence[IPNetwork]) -> None:
        self.app = app
        self.trusted = list(trusted)

    def _trusted(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("client"):
            peer, port = scope["client"]
            hops = [peer]  # nearest last
            if self._trusted(peer):
                for name, value in scope.get("headers", []):
                    if name == b"x-forwarded-for":
                        listed = [h.strip() for h in value.decode("latin-1").split(",")]
                        hops = [h for h in listed if h] + hops
                # The client is the nearest hop no trusted proxy vouches for.
                i = len(hops) - 1
                while i > 0 and self._trusted(hops[i]):
                    i -= 1
                hops = hops[i:]
                if hops[0] != peer:
                    scope["client"] = (hops[0], 0 if len(hops) > 1 else port)
            scope.setdefault("state", {})[_CHAIN_KEY] = ", ".join(hops)
        await self.app(scope, receive, send)


def forwarded_chain(request: Request) -> str:
    """``X-Forwarded-For`` to send on behalf of this request: its client, then trusted hops."""
    chain = request.scope.get("state", {}).get(_CHAIN_KEY)
    if isinstance(chain, str):
        return chain
    return request.client.host if request.client else ""
