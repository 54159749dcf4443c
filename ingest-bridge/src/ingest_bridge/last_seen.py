"""Each device's last-seen time in Redis, written in batches (at most once a second per device)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from redis.asyncio import Redis

from iot_common import redis_keys

log = logging.getLogger(__name__)


class LastSeenWriter:
    """Collects device ids seen since the last flush and writes them with one ``HSET``."""

    def __init__(self, *, redis: Redis, namespace: str, interval: float = 1.0) -> None:
        self._redis = redis
        self._key = redis_keys.last_seen(namespace)
        self._interval = interval
        self._dirty: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def touch(self, device_ids: Iterable[str], ts: float) -> None:
        dirty = self._dirty
        for did in device_ids:
            dirty[did] = ts

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="last-seen")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def flush(self) -> None:
        if not self._dirty:
            return
        batch, self._dirty = self._dirty, {}
        try:
            await self._redis.hset(
                self._key, mapping={did: f"{ts:.3f}" for did, ts in batch.items()}
            )
        except Exception as exc:
            log.warning("last-seen write failed (%s); keeping %d devices", exc, len(batch))
            for did, ts in batch.items():
                self._dirty.setdefault(did, ts)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()
