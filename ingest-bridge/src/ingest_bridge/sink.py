"""The Kafka side: one batched aiokafka producer (acks=all) and produce-until-acknowledged.

:meth:`KafkaSink.produce` returns only once Kafka has acknowledged every record handed to it;
records that fail because Kafka is unavailable (broker down, timeouts, no leader:
:func:`~iot_common.stream_errors.kafka_unavailable`) are retried with backoff for as long as
it takes, while :attr:`KafkaSink.ready` reports the stall, so callers never acknowledge
upstream early and never drop anything. Memory stays bounded because the sources stop taking
messages while their in-flight limit is reached.

A record Kafka will never take (larger than a request may be, or refused by the broker for
good) goes to the ``on_producer_error`` callback instead of being retried forever, which
would stall every source behind it: by default it is logged and replaced by its dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import murmur2

from ingest_bridge import metrics
from iot_common.stream_errors import (
    ProducerErrorCallback,
    RecordRef,
    default_on_producer_error,
    kafka_unavailable,
)
from iot_common.telemetry import DeadLetter, deadletter_encoder
from iot_common.telemetry import DeadLetterReason as R

log = logging.getLogger(__name__)


class Record(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes


class SinkClosed(Exception):
    """The sink was closed while records were still unacknowledged."""


class SinkRefused(Exception):
    """Kafka will never take a record, and ``on_producer_error`` chose to raise."""


#: What a record costs in a request beyond its key and value (record and batch headers).
RECORD_OVERHEAD = 128

DeadLetterFactory = Callable[[Record, Exception], "Record | None"]


def refused_dead_letter(
    rec: Record, exc: Exception, *, topic: str, max_payload: int
) -> Record | None:
    """The dead letter of a record Kafka refused: why, and its first ``max_payload`` bytes
    (None for a refused dead letter: that one is only logged and counted)."""
    if rec.topic == topic:
        return None
    payload = rec.value[:max_payload]
    detail = f"Kafka refused the record for {rec.topic}: {type(exc).__name__}: {exc}"
    if len(rec.value) > max_payload:
        detail += f" (payload truncated to its first {max_payload} bytes)"
    dl = DeadLetter(
        reason=R.TOO_LARGE if isinstance(exc, MessageSizeTooLargeError) else R.SINK_REFUSED,
        source="ingest-bridge",
        payload=payload,
        ts=time.time(),
        device_id=rec.key.decode("utf-8", "replace") if rec.key is not None else None,
        detail=detail,
    )
    return Record(topic, rec.key, deadletter_encoder.encode(dl))


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
        on_producer_error: ProducerErrorCallback = default_on_producer_error,
        dead_letter: DeadLetterFactory | None = None,
    ) -> None:
        """``dead_letter`` makes the record that stands for a refused one (None: none, the
        refused record is only counted); ``on_producer_error`` decides whether to."""
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
        self._max_request = max_request_bytes
        self._on_error = on_producer_error
        self._dead_letter = dead_letter
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
        alone: set[int] = set()
        try:
            while True:
                failed, refused, split = await self._attempt(producer, todo, alone)
                # Dead letters of refused records go out with the next attempt, at once.
                replacements = [r for rec, exc in refused if (r := self._refused(rec, exc))]
                if not failed and not replacements and not split:
                    self._failing = False
                    metrics.PRODUCE_LATENCY.observe(time.monotonic() - start)
                    return
                if failed:
                    if self._closing:
                        raise SinkClosed(f"{len(failed)} records unacknowledged at shutdown")
                    self._failing = True
                    metrics.PRODUCE_FAILURES.inc()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                alone = {id(r) for r in split}
                todo = [*failed, *split, *replacements]
        finally:
            del self._pending[call_id]

    def _refused(self, rec: Record, exc: Exception) -> Record | None:
        """Ask ``on_producer_error`` about a record Kafka will never take; its dead letter
        (to produce instead), or None."""
        ref = RecordRef(rec.topic, key=rec.key, value=rec.value)
        if not self._on_error(exc, ref, log):
            raise SinkRefused(f"Kafka refused a record for {rec.topic}: {exc}") from exc
        metrics.PRODUCE_REFUSED.inc()
        if self._dead_letter is None:
            return None
        return self._dead_letter(rec, exc)

    async def _attempt(
        self, producer: AIOKafkaProducer, records: Sequence[Record], alone: set[int]
    ) -> tuple[list[Record], list[tuple[Record, Exception]], list[Record]]:
        """Send every record once, in per-partition batches (records whose ``id`` is in
        ``alone`` in batches of their own). Returns those that failed (to retry), those
        Kafka will never take, and those of batches it refused for good (to send alone:
        then each finds out whether it is one Kafka does not take).

        Records are grouped by partition (Kafka's default murmur2 partitioning of the key,
        cached per key) and handed over as whole record batches, so the cost per record is
        an append to a batch rather than a coroutine, a future and a callback each.
        """
        groups: dict[tuple[str, int], list[Record]] = {}
        failed: list[Record] = []
        refused: list[tuple[Record, Exception]] = []
        split: list[Record] = []
        for rec in records:
            size = len(rec.value) + len(rec.key or b"") + RECORD_OVERHEAD
            if size > self._max_request:
                # aiokafka checks this in send(), not for batches: a record larger than a
                # request can never be produced.
                too_large = MessageSizeTooLargeError(f"{size} bytes > {self._max_request}")
                refused.append((rec, too_large))
                continue
            try:
                part = await self._partition(producer, rec.topic, rec.key)
            except (KafkaError, OSError) as exc:
                self._note_error(exc)
                failed.append(rec)
                continue
            groups.setdefault((rec.topic, part), []).append(rec)
        sent: list[tuple[asyncio.Future[Any], list[Record]]] = []
        for (topic, part), recs in groups.items():
            for chunk, batch in self._batches(producer, recs, alone):
                try:
                    sent.append((await producer.send_batch(batch, topic, partition=part), chunk))
                except (KafkaError, OSError) as exc:
                    self._note_error(exc)
                    failed.extend(chunk)
        results = await asyncio.gather(*(f for f, _ in sent), return_exceptions=True)
        for (_, chunk), res in zip(sent, results, strict=True):
            if not isinstance(res, BaseException):
                continue
            self._note_error(res)
            if not isinstance(res, Exception) or kafka_unavailable(res):
                failed.extend(chunk)
            elif len(chunk) == 1:
                refused.append((chunk[0], res))
            else:
                split.extend(chunk)
        return failed, refused, split

    @staticmethod
    def _batches(
        producer: AIOKafkaProducer, recs: list[Record], alone: set[int]
    ) -> Iterator[tuple[list[Record], Any]]:
        """Closed record batches of ``recs``, in order, as full as they get."""
        chunk: list[Record] = []
        batch = producer.create_batch()
        for rec in recs:
            single = id(rec) in alone
            if chunk and (
                single or batch.append(timestamp=None, key=rec.key, value=rec.value) is None
            ):
                batch.close()
                yield chunk, batch
                chunk, batch = [], producer.create_batch()
            if not chunk:
                # The first record always fits (aiokafka takes it whatever its size).
                batch.append(timestamp=None, key=rec.key, value=rec.value)
            chunk.append(rec)
            if single:
                batch.close()
                yield chunk, batch
                chunk, batch = [], producer.create_batch()
        if chunk:
            batch.close()
            yield chunk, batch

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
