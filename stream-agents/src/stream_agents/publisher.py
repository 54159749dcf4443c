"""Producing the agents' output: windows, alerts and dead letters, in whole record batches."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from iot_common.stream_errors import SinkBackpressureError, kafka_unavailable
from stream_agents.backpressure import FIRST_RETRY_AFTER


class Publisher(Protocol):
    async def publish(self, topic: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce records (key, value) and wait until the broker has them; raise
        :class:`SinkBackpressureError` when the broker cannot take them for now."""


class PublisherService(Publisher, Protocol):
    """A publisher with a lifecycle (the runtime starts and stops it)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class KafkaPublisher:
    """Batched producing (aiokafka batch API; partition = murmur2(key) like Java clients)."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        #: Made by :meth:`start`: aiokafka binds a producer to the event loop running when it
        #: is constructed, and the app is built before Faust starts its loop.
        self._producer: AIOKafkaProducer | None = None
        self._parts: dict[str, int] = {}
        #: key → partition per partition count (topics may differ: ``telemetry.raw`` with 8
        #: partitions, an auto-created ``alerts`` with 1). Keyed by count, not topic: topics
        #: with the same count share the murmur2 results.
        self._pcache: dict[int, dict[bytes, int]] = {}

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaPublisher used before start()")
        return self._producer

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            linger_ms=5,
            max_batch_size=512 * 1024,
            acks="all",
            enable_idempotence=False,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def _partitions(self, topic: str) -> int:
        n = self._parts.get(topic)
        if n is None:
            parts = await self.producer.partitions_for(topic)
            n = len(parts)
            self._parts[topic] = n
        return n

    async def publish(self, topic: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        if not items:
            return
        try:
            await self._publish(topic, items)
        except (KafkaError, OSError) as exc:
            if not kafka_unavailable(exc):
                raise
            raise SinkBackpressureError(
                f"kafka unavailable for {topic}: {type(exc).__name__}: {exc}",
                sink="kafka",
                retry_after=FIRST_RETRY_AFTER,
                topic=topic,
            ) from exc

    async def _publish(self, topic: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        producer = self.producer
        n = await self._partitions(topic)
        by_part: dict[int, list[tuple[bytes, bytes]]] = {}
        cache = self._pcache.setdefault(n, {})
        for key, value in items:
            p = cache.get(key)
            if p is None:
                if len(cache) > 500_000:
                    cache.clear()
                p = (murmur2(key) & 0x7FFFFFFF) % n
                cache[key] = p
            by_part.setdefault(p, []).append((key, value))
        futures = []
        for p, recs in by_part.items():
            batch = producer.create_batch()
            for key, value in recs:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
