"""Fixed-window login limits in Redis, per client address and per email."""

from __future__ import annotations

from redis.asyncio import Redis

from iot_common import redis_keys
from iot_common.errors import TooManyRequests


class LoginLimiter:
    """Counts login attempts per address (all) and per email (failures) in Redis."""

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        per_address: int,
        per_email: int,
        window_seconds: int,
    ) -> None:
        self._redis = redis
        self._ns = namespace
        self._per_address = per_address
        self._per_email = per_email
        self._window = window_seconds

    def _address_key(self, address: str) -> str:
        return redis_keys.rate_limit(self._ns, "login-address", address)

    def _email_key(self, email: str) -> str:
        return redis_keys.rate_limit(self._ns, "login-email", email)

    async def check(self, *, address: str, email: str) -> None:
        """Count this attempt against the address; raise 429 when either limit is used up."""
        addr_key, email_key = self._address_key(address), self._email_key(email)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(addr_key)
            pipe.expire(addr_key, self._window, nx=True)
            pipe.ttl(addr_key)
            pipe.get(email_key)
            pipe.ttl(email_key)
            addr_count, _, addr_ttl, email_count, email_ttl = await pipe.execute()
        if int(addr_count) > self._per_address:
            raise TooManyRequests(
                "too many login attempts from this address; try again later",
                retry_after=_retry_after(addr_ttl, self._window),
            )
        if email_count is not None and int(email_count) >= self._per_email:
            raise TooManyRequests(
                "too many failed logins for this account; try again later",
                retry_after=_retry_after(email_ttl, self._window),
            )

    async def failed(self, *, email: str) -> None:
        key = self._email_key(email)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self._window, nx=True)
            await pipe.execute()


def _retry_after(ttl: int, window: int) -> int:
    return int(ttl) if ttl and int(ttl) > 0 else window
