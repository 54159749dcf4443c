"""The Kafka side: one batched aiokafka producer (acks=all) and produce-until-acknowledged.

:meth:`KafkaSink.produce` returns only once Kafka has acknowledged every record handed to it;
records that fail (broker down, timeouts) are retried with backoff for as long as it takes,
while :attr:`KafkaSink.ready` reports the stall, so callers never acknowledge upstream early
and never drop anything. Memory stays bounded because the sources stop taking messages while
their in-flight limit is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from ingest_bridge import metrics

log = logging.getLogger(__name__)


class Record(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes


class SinkClosed(Exception):
    """The sink was closed while records were still unacknowledged."""


class KafkaSink:
    """Produces records in batches and waits for their acknowledgement."""

    def __init__(
        self,
        *,
        bootstrap: str,
        linger_ms: int = 5,
        max_batch_bytes: int = 512 * 1024,
        max_request_bytes: int = 4 * 1024 * 1024,
        compression: str | None = "lz4",
        request_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 200,
        stall_seconds: float = 5.0,
        client_id: str = "ingest-bridge",
    ) -> None:
        self._kwargs: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "acks": "all",
            "linger_ms": linger_ms,
            "max_batch_size": max_batch_bytes,
            "max_request_size": max_request_bytes,
            "compression_type": None if compression in (None, "none") else compression,
            "request_timeout_ms": request_timeout_ms,
            "retry_backoff_ms": retry_backoff_ms,
            "enable_idempotence": False,
        }
        self._stall = stall_seconds
        self._producer: AIOKafkaProducer | None = None
        self._started = asyncio.Event()
        self._closing = False
        self._failing = False
        #: start times of produce calls still waiting for acknowledgement
        self._pending: dict[int, float] = {}
        self._next_id = 0
        self.last_error: str | None = None
        self._partitions: dict[str, tuple[float, list[int]]] = {}
        self._key_partition: dict[str, dict[bytes, int]] = {}
        self._round_robin = 0

    @property
    def connected(self) -> bool:
        return self._started.is_set() and not self._failing

    @property
    def ready(self) -> bool:
        """Connected, and nothing has waited for Kafka longer than the stall limit."""
        if not self.connected:
            return False
        if self._pending:
            oldest = min(self._pending.values())
            if time.monotonic() - oldest > self._stall:
                return False
        return True

    async def start(self) -> None:
        """Connect, retrying until the broker answers (or :meth:`close` is called)."""
        backoff = 0.2
        while not self._closing:
            producer = AIOKafkaProducer(**self._kwargs)
            try:
                await producer.start()
            except Exception as exc:
                self.last_error = f"connect: {exc}"
                log.warning("Kafka not reachable (%s); retrying in %.1fs", exc, backoff)
                with contextlib.suppress(Exception):
                    await producer.stop()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._producer = producer
            self._started.set()
            log.info("Kafka producer connected to %s", self._kwargs["bootstrap_servers"])
            return

    async def wait_started(self) -> None:
        await self._started.wait()

    async def close(self) -> None:
        self._closing = True
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()

    async def produce(self, records: Sequence[Record]) -> None:
        """Produce ``records`` and return once Kafka acknowledged all of them."""
        if not records:
            return
        await self._started.wait()
        producer = self._producer
        assert producer is not None
        call_id = self._next_id
        self._next_id += 1
        start = time.monotonic()
        self._pending[call_id] = start
        backoff = self._kwargs["retry_backoff_ms"] / 1000
        todo: Sequence[Record] = records
        try:
            while True:
                failed = await self._attempt(producer, todo)
                if not failed:
                    self._failing = False
                    metrics.PRODUCE_LATENCY.observe(time.monotonic() - start)
                    return
                if self._closing:
                    raise SinkClosed(f"{len(failed)} records unacknowledged at shutdown")
                self._failing = True
                metrics.PRODUCE_FAILURES.inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                todo = failed
        finally:
            del self._pending[call_id]

    async def _attempt(self, producer: AIOKafkaProducer, records: Sequence[Record]) -> list[Record]:
        """Send every record once, in per-partition batches; returns those that failed.

        Records are grouped by partition (Kafka's default murmur2 partitioning of the key,
        cached per key) and handed over as whole record batches, so the cost per record is
        an append to a batch rather than a coroutine, a future and a callback each.
        """
        groups: dict[tuple[str, int], list[Record]] = {}
        failed: list[Record] = []
        for rec in records:
            try:
                part = await self._partition(producer, rec.topic, rec.key)
            except Exception as exc:
                self._note_error(exc)
                failed.append(rec)
                continue
            groups.setdefault((rec.topic, part), []).append(rec)
        sent: list[tuple[asyncio.Future[Any], list[Record]]] = []
        for (topic, part), recs in groups.items():
            start = 0
            while start < len(recs):
                batch = producer.create_batch()
                end = start
                while end < len(recs):
                    rec = recs[end]
                    if batch.append(timestamp=None, key=rec.key, value=rec.value) is None:
                        break
                    end += 1
                if end == start:  # a record too large even for an empty batch
                    self._note_error(ValueError(f"record of {len(recs[end].value)} bytes"))
                    failed.append(recs[end])
                    start += 1
                    continue
                batch.close()
                chunk = recs[start:end]
                start = end
                try:
                    sent.append((await producer.send_batch(batch, topic, partition=part), chunk))
                except Exception as exc:
                    self._note_error(exc)
                    failed.extend(chunk)
        results = await asyncio.gather(*(f for f, _ in sent), return_exceptions=True)
        for (_, chunk), res in zip(sent, results, strict=True):
            if isinstance(res, BaseException):
                self._note_error(res)
                failed.extend(chunk)
        return failed

    async def _partition(self, producer: AIOKafkaProducer, topic: str, key: bytes | None) -> int:
        now = time.monotonic()
        known = self._partitions.get(topic)
        if known is None or now - known[0] > 30:
            parts = sorted(await producer.partitions_for(topic))
            if not parts:
                raise KafkaError(f"no partitions known for {topic}")
            if known is None or known[1] != parts:
                self._key_partition.pop(topic, None)
            known = (now, parts)
            self._partitions[topic] = known
        parts = known[1]
        if key is None:
            self._round_robin += 1
            return parts[self._round_robin % len(parts)]
        cache = self._key_partition.setdefault(topic, {})
        part = cache.get(key)
        if part is None:
            if len(cache) > 200_000:
                cache.clear()
            part = cache[key] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
        return part

    def _note_error(self, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        if msg != self.last_error:
            log.warning("Kafka produce failed: %s", msg)
        self.last_error = msg
