"""The ingest path's Redis view of each device, and the last-seen times the bridge writes.

The hash at ``redis_keys.device_cache(ns, id)`` holds ``exists``, ``active``, ``owner_id``,
``token_hash``, ``config_version`` and ``type`` (the contract), plus ``stamp``: the device's
``updated_at`` in microseconds. Writes go through a compare-and-set script so that a lookup
that read the database before a change cannot overwrite the entry the change wrote.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis

from device_management.models import Device
from iot_common import redis_keys

log = logging.getLogger(__name__)

CACHE_WRITES = Counter(
    "device_cache_writes_total", "Device cache entries written", ["kind", "outcome"]
)

# KEYS[1] = cache key; ARGV = stamp, ttl, field, value, ...
_CAS_SCRIPT = """
local cur = redis.call('HGET', KEYS[1], 'stamp')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'stamp', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def stamp_of(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def cache_fields(device: Device) -> dict[str, str]:
    return {
        "exists": "1",
        "active": "1" if device.active else "0",
        "owner_id": str(device.owner_id),
        "token_hash": device.token_hash or "",
        "config_version": str(device.config_version),
        "type": device.type,
    }


class DeviceCache:
    """Writes (and reads, for tests and health) the device cache and reads last-seen times."""

    def __init__(self, redis: Redis, *, namespace: str, ttl: int, negative_ttl: int) -> None:
        self.redis = redis
        self.namespace = namespace
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._cas = redis.register_script(_CAS_SCRIPT)

    def key(self, device_id: uuid.UUID | str) -> str:
        return redis_keys.device_cache(self.namespace, str(device_id))

    def _args(self, stamp: int, ttl: int, fields: dict[str, str]) -> list[Any]:
        args: list[Any] = [stamp, ttl]
        for name, value in fields.items():
            args += [name, value]
        return args

    async def store(self, device: Device) -> None:
        """Write ``device``'s entry; never raises (a stale entry expires with its TTL)."""
        try:
            await self._cas(
                keys=[self.key(device.id)],
                args=self._args(stamp_of(device.updated_at), self.ttl, cache_fields(device)),
            )
            CACHE_WRITES.labels("present", "ok").inc()
        except Exception as exc:
            CACHE_WRITES.labels("present", "error").inc()
            log.warning("device cache write failed for %s: %s", device.id, exc)

    async def store_missing(self, device_id: uuid.UUID | str, *, deleted: bool = False) -> None:
        """Negative entry. A deletion outranks any earlier write; a plain miss outranks none."""
        stamp = int(time.time() * 1_000_000) if deleted else 0
        try:
            await self._cas(
                keys=[self.key(device_id)],
                args=self._args(stamp, self.negative_ttl, {"exists": "0"}),
            )
            CACHE_WRITES.labels("missing", "ok").inc()
        except Exception as exc:
            CACHE_WRITES.labels("missing", "error").inc()
            log.warning("device cache write failed for %s: %s", device_id, exc)

    async def get(self, device_id: uuid.UUID | str) -> dict[str, str] | None:
        raw: dict[Any, Any] = await self.redis.hgetall(self.key(device_id))
        if not raw:
            return None
        return {_s(k): _s(v) for k, v in raw.items()}

    async def last_seen(self, device_id: uuid.UUID | str) -> float | None:
        try:
            raw = await self.redis.hget(redis_keys.last_seen(self.namespace), str(device_id))
        except Exception as exc:
            log.warning("last-seen read failed for %s: %s", device_id, exc)
            return None
        return _epoch(raw)

    async def last_seen_many(self, device_ids: list[uuid.UUID]) -> list[float | None]:
        if not device_ids:
            return []
        try:
            raw = await self.redis.hmget(
                redis_keys.last_seen(self.namespace), [str(d) for d in device_ids]
            )
        except Exception as exc:
            log.warning("last-seen read failed: %s", exc)
            return [None] * len(device_ids)
        return [_epoch(v) for v in raw]

    async def lookup_and_store(self, device: Device) -> float | None:
        """One round trip for a read of one device: refresh its cache entry, get its last seen."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hget(redis_keys.last_seen(self.namespace), str(device.id))
                pipe.evalsha(
                    self._cas.sha,
                    1,
                    self.key(device.id),
                    *self._args(stamp_of(device.updated_at), self.ttl, cache_fields(device)),
                )
                raw, _ = await pipe.execute()
        except Exception as exc:
            # NOSCRIPT after a Redis restart, or Redis away: fall back to the plain calls.
            log.debug("pipelined lookup failed for %s: %s", device.id, exc)
            await self.store(device)
            return await self.last_seen(device.id)
        return _epoch(raw)

    async def forget_last_seen(self, device_id: uuid.UUID | str) -> None:
        try:
            await self.redis.hdel(redis_keys.last_seen(self.namespace), str(device_id))
        except Exception as exc:
            log.warning("last-seen cleanup failed for %s: %s", device_id, exc)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _epoch(raw: Any) -> float | None:
    if raw is None:
        return None
    try:
        return float(_s(raw))
    except ValueError:
        return None
