"""Login and registration limits in Redis, shared by every signing replica.

Nobody can lock an account by failing its password: failures count per (client address,
account), and past a few free attempts each further one from that address must wait twice as
long as the one before. The owner, signing in from anywhere else, is not slowed at all. A
per-address limit over all accounts (every attempt counts) stops one address from spraying
many accounts. IPv6 clients are counted per /64, which one subscriber usually holds whole.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from iot_common import redis_keys
from iot_common.errors import TooManyRequests

# One round trip, atomic across replicas: count the attempt against the address (fixed
# window), refuse while the (address, account) pair waits out its delay, otherwise count the
# attempt for the pair and, past the free ones, set when the next one may come. Attempts are
# counted when they start (a success clears the pair), so parallel guesses cannot slip in
# before a failure is recorded.
_LOGIN_CHECK = """
local address = redis.call('INCR', KEYS[1])
if address == 1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
if address > tonumber(ARGV[2]) then
  return {1, redis.call('TTL', KEYS[1])}
end
local now = tonumber(ARGV[1])
local blocked_until = tonumber(redis.call('HGET', KEYS[2], 'until') or '0')
if now < blocked_until then
  return {2, math.ceil(blocked_until - now)}
end
local attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
local free = tonumber(ARGV[4])
if attempts > free then
  local delay = math.min(tonumber(ARGV[5]) * 2 ^ (attempts - free - 1), tonumber(ARGV[6]))
  redis.call('HSET', KEYS[2], 'until', tostring(now + delay))
end
redis.call('EXPIRE', KEYS[2], ARGV[7])
return {0, 0}
"""

_FIXED_WINDOW = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""


def client_key(address: str) -> str:
    """What limits count by: the address, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginLimiter:
    """Per-address attempts and per-(address, account) growing delays, in Redis."""

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        per_address: int,
        window_seconds: int,
        free_failures: int,
        delay_base_seconds: float,
        delay_max_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._ns = namespace
        self._per_address = per_address
        self._window = window_seconds
        self._free = free_failures
        self._base = delay_base_seconds
        self._max = delay_max_seconds
        # Failures are forgotten once a pair has been quiet for longer than the longest delay.
        self._memory = max(math.ceil(delay_max_seconds) * 2, window_seconds)
        self._clock = clock
        self._check = redis.register_script(_LOGIN_CHECK)

    def _keys(self, address: str, email: str) -> list[str]:
        client = client_key(address)
        return [
            redis_keys.rate_limit(self._ns, "login-address", client),
            redis_keys.rate_limit(self._ns, "login-pair", f"{client}|{email.lower()}"),
        ]

    async def check(self, *, address: str, email: str) -> None:
        """Count this attempt; raise 429 while the address or this (address, account) waits."""
        args: list[Any] = [
            self._clock(),
            self._per_address,
            self._window,
            self._free,
            self._base,
            self._max,
            self._memory,
        ]
        verdict, retry_after = await self._check(keys=self._keys(address, email), args=args)
        if int(verdict) == 1:
            raise TooManyRequests(
                "too many login attempts from this address; try again later",
                retry_after=_positive(retry_after, self._window),
            )
        if int(verdict) == 2:
            raise TooManyRequests(
                "too many failed logins for this account from this address; try again later",
                retry_after=_positive(retry_after, 1),
            )

    async def succeeded(self, *, address: str, email: str) -> None:
        """The right password: this address starts afresh for this account."""
        await self._redis.delete(self._keys(address, email)[1])


class FixedWindowLimit:
    """At most ``limit`` events per key per window (registrations per address)."""

    def __init__(
        self, redis: Redis, *, namespace: str, scope: str, limit: int, window_seconds: int
    ) -> None:
        self._ns = namespace
        self._scope = scope
        self._limit = limit
        self._window = window_seconds
        self._count = redis.register_script(_FIXED_WINDOW)

    async def hit(self, ident: str, *, message: str) -> None:
        key = redis_keys.rate_limit(self._ns, self._scope, client_key(ident))
        count, ttl = await self._count(keys=[key], args=[self._window])
        if int(count) > self._limit:
            raise TooManyRequests(message, retry_after=_positive(ttl, self._window))


def _positive(ttl: Any, fallback: int) -> int:
    return int(ttl) if ttl is not None and int(ttl) > 0 else fallback
