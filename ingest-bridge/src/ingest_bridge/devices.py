"""Device lookups for the ingest path: local TTL cache → Redis cache hash → device-management.

device-management keeps a hash per device in Redis (``iot_common.redis_keys.device_cache``);
the bridge reads it for a whole batch of ids in one pipelined round trip, keeps answers a few
seconds in memory, and only on a Redis miss asks device-management's internal API (which
also fills the Redis cache for everyone else).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio import Redis

from iot_common import redis_keys

log = logging.getLogger(__name__)

#: Device ids are UUIDs; anything outside this alphabet is unknown without a lookup.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")


class DeviceLookupUnavailable(Exception):
    """Neither the cache nor device-management could answer; try the batch again later."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    exists: bool
    active: bool = False
    owner_id: str | None = None
    token_hash: str = ""
    config_version: int = 0
    type: str | None = None

    def token_matches(self, token: str) -> bool:
        """Whether ``token`` is this device's credential (sha256 hex, constant-time compare)."""
        if not self.token_hash:
            return False
        digest = hashlib.sha256(token.encode()).hexdigest()
        return hmac.compare_digest(digest, self.token_hash)


UNKNOWN = DeviceInfo(exists=False)


def valid_device_id(device_id: str) -> bool:
    return _ID_RE.match(device_id) is not None


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def info_from_hash(fields: dict[Any, Any]) -> DeviceInfo | None:
    """A cache hash as device-management writes it, or None for a miss (empty hash)."""
    if not fields:
        return None
    f = {_s(k): _s(v) for k, v in fields.items()}
    if f.get("exists", "1") == "0":
        return UNKNOWN
    try:
        version = int(f.get("config_version") or 0)
    except ValueError:
        version = 0
    return DeviceInfo(
        exists=True,
        active=f.get("active", "1") == "1",
        owner_id=f.get("owner_id") or None,
        token_hash=f.get("token_hash", ""),
        config_version=version,
        type=f.get("type") or None,
    )


def info_from_api(body: dict[str, Any]) -> DeviceInfo:
    return DeviceInfo(
        exists=True,
        active=bool(body.get("active", True)),
        owner_id=str(body["owner_id"]) if body.get("owner_id") else None,
        token_hash=str(body.get("token_hash") or ""),
        config_version=int(body.get("config_version") or 0),
        type=str(body["type"]) if body.get("type") else None,
    )


class DeviceDirectory:
    """Batched device lookups with a small local TTL cache."""

    def __init__(
        self,
        *,
        redis: Redis,
        namespace: str,
        device_management_url: str,
        internal_token: str,
        http: httpx.AsyncClient | None = None,
        ttl: float = 5.0,
        negative_ttl: float = 2.0,
        max_size: int = 100_000,
        timeout: float = 5.0,
        concurrency: int = 16,
    ) -> None:
        self._redis = redis
        self._ns = namespace
        self._base = device_management_url.rstrip("/")
        self._headers = {"X-Internal-Token": internal_token}
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._own_http = http is None
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_size = max_size
        self._local: dict[str, tuple[DeviceInfo, float]] = {}
        self._sem = asyncio.Semaphore(concurrency)

    async def close(self) -> None:
        if self._own_http:
            await self._http.aclose()

    def forget(self, device_id: str) -> None:
        """Drop a local entry (e.g. on a device event), so the next lookup asks again."""
        self._local.pop(device_id, None)

    async def get(self, device_id: str) -> DeviceInfo:
        return (await self.lookup_many([device_id]))[device_id]

    async def lookup_many(self, device_ids: Iterable[str]) -> dict[str, DeviceInfo]:
        """Info for every id (``UNKNOWN`` for ids that do not exist).

        Raises :class:`DeviceLookupUnavailable` when an id is in neither cache and
        device-management cannot be reached, so the caller retries instead of refusing
        good readings.
        """
        now = time.monotonic()
        found: dict[str, DeviceInfo] = {}
        missing: list[str] = []
        local = self._local
        for did in set(device_ids):
            hit = local.get(did)
            if hit is not None and hit[1] > now:
                found[did] = hit[0]
            elif not valid_device_id(did):
                found[did] = UNKNOWN
            else:
                missing.append(did)
        if not missing:
            return found
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for did in missing:
                    pipe.hgetall(redis_keys.device_cache(self._ns, did))
                hashes: list[Any] = await pipe.execute()
        except Exception as exc:
            log.warning("device cache read failed (%s); asking device-management", exc)
            hashes = [None] * len(missing)
        misses: list[str] = []
        for did, fields in zip(missing, hashes, strict=True):
            info = info_from_hash(fields) if fields else None
            if info is None:
                misses.append(did)
            else:
                found[did] = info
                self._remember(did, info, now)
        if misses:
            answers = await asyncio.gather(*(self._fetch(did) for did in misses))
            for did, info in zip(misses, answers, strict=True):
                found[did] = info
                self._remember(did, info, now)
        return found

    def _remember(self, did: str, info: DeviceInfo, now: float) -> None:
        if len(self._local) >= self._max_size:
            # Cheap eviction: expired first, else everything (the cache refills in one batch).
            self._local = {k: v for k, v in self._local.items() if v[1] > now}
            if len(self._local) >= self._max_size:
                self._local.clear()
        ttl = self._ttl if info.exists else self._negative_ttl
        self._local[did] = (info, now + ttl)

    async def _fetch(self, device_id: str) -> DeviceInfo:
        url = f"{self._base}/internal/devices/{device_id}"
        async with self._sem:
            try:
                resp = await self._http.get(url, headers=self._headers)
            except httpx.HTTPError as exc:
                raise DeviceLookupUnavailable(f"device-management unreachable: {exc}") from exc
        if resp.status_code == 404:
            return UNKNOWN
        if resp.status_code != 200:
            raise DeviceLookupUnavailable(
                f"device-management answered {resp.status_code} for device {device_id}"
            )
        try:
            return info_from_api(resp.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise DeviceLookupUnavailable(f"bad device-management answer: {exc}") from exc
