"""Where webhooks may connect: public addresses only, checked on the address actually used.

A subscriber chooses the URL, so without this the API would POST wherever it is told: to
loopback services, the cloud metadata address, the private network behind the gateway.
:class:`EgressPolicy` refuses every address that is not globally routable — loopback,
private, link-local, CGNAT (100.64/10), unique-local, site-local, multicast, unspecified,
reserved — including IPv6 forms that embed such an IPv4 address (IPv4-mapped
``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, 6to4 ``2002::/16``, NAT64
``64:ff9b::/96``). Private networks are reachable only when an operator lists them
(``webhook_allow_private_networks``).

The check runs twice: when a subscription is created (a clear 422 for the subscriber) and
when each connection is opened. :class:`PinnedBackend` resolves the host itself, checks every
address the name resolves to, and connects to the checked address, so a name that resolves
to a public address at creation and to loopback later (DNS rebinding) is refused at connect
time; TLS still verifies the certificate for the name and sends it as SNI, and the
``Host`` header stays the name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpcore

from monitoring_api.errors import UnsafeWebhookTarget

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class EgressRefused(httpcore.ConnectError):
    """A connection refused before it was opened: the target's address is not allowed.

    A ``ConnectError`` so the HTTP client treats it as any other failure to connect; the
    message (which names the address) is for this service's log, never for the subscriber.
    """


class Resolver(Protocol):
    """Turns a host name into the addresses a TCP connection to it may use."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]: ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``), off the event loop."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        return _unique(ipaddress.ip_address(info[4][0]) for info in infos)


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    return list(dict.fromkeys(addresses))


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for or carries, if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast, and so is any IPv4 address it embeds."""
    inner = embedded_ipv4(ip)
    if inner is not None and not is_public(inner):
        return False
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or ip.is_link_local:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False
    return ip.is_global


class EgressPolicy:
    """Which addresses webhook deliveries may connect to."""

    def __init__(self, *, allow_private: Sequence[IPNetwork] = ()) -> None:
        self.allow_private = list(allow_private)

    @classmethod
    def from_setting(cls, networks: Sequence[str]) -> EgressPolicy:
        return cls(allow_private=[ipaddress.ip_network(n, strict=False) for n in networks])

    def permits(self, ip: IPAddress) -> bool:
        # An address embedding IPv4 is judged as that IPv4 address (::ffff:127.0.0.1 is
        # loopback), so allowing 127.0.0.0/8 does not also need every IPv6 spelling of it.
        effective = embedded_ipv4(ip) or ip
        if any(effective in net for net in self.allow_private):
            return True
        return is_public(ip)

    async def addresses(self, host: str, port: int, *, resolver: Resolver) -> list[IPAddress]:
        """Every address ``host`` resolves to, all permitted; EgressRefused otherwise.

        A name with one forbidden address among public ones is refused whole: whoever
        controls its DNS could steer any connection to the forbidden one.
        """
        literal = _literal(host)
        try:
            found = [literal] if literal is not None else await resolver.resolve(host, port)
        except (OSError, UnicodeError) as exc:  # gaierror is an OSError
            raise EgressRefused(f"{host} does not resolve: {exc}") from exc
        if not found:
            raise EgressRefused(f"{host} does not resolve")
        refused = [ip for ip in found if not self.permits(ip)]
        if refused:
            raise EgressRefused(f"{host} resolves to {refused[0]}, which webhooks may not reach")
        return found


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Egress:
    """The policy and the resolver, shared by the URL check at creation and the sender."""

    policy: EgressPolicy
    resolver: Resolver

    async def check_url(self, host: str, port: int) -> None:
        """UnsafeWebhookTarget unless every address of ``host`` is one webhooks may reach.

        One answer whatever the reason (private, unresolvable, mixed): which names resolve,
        and to what, inside the platform's network is not the subscriber's to learn.
        """
        try:
            await self.policy.addresses(host, port, resolver=self.resolver)
        except EgressRefused as exc:
            log.info("webhook URL host %s refused: %s", host, exc)
            raise UnsafeWebhookTarget(
                "webhook URL must resolve to public addresses only",
                details=[{"field": "url", "message": "must be a public http(s) URL"}],
            ) from None


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy permits.

    httpcore hands ``connect_tcp`` the URL's host; this resolves it, checks what it resolved
    to, and opens the socket to that checked address (never resolving twice). TLS is started
    afterwards by httpcore with the URL's host as server name, so certificates are verified
    against the name, not the address.
    """

    def __init__(
        self,
        *,
        policy: EgressPolicy,
        resolver: Resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.policy.addresses(host, port, resolver=self.resolver)
        last: Exception | None = None
        for ip in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("webhooks never connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
