"""Faust's consumer, with the partitions of ``telemetry.raw`` read in whole batches by us.

This is the only module that reaches into Faust's and aiokafka's private members; every such
line is marked ``# noqa: SLF001`` (ruff enforces it for the rest of stream-agents). Why we
need them at all: Faust hands records to agents one event at a time, which tops out at
~7,400 records/s here (``benchmarks/bench_agents.py``), while the batch loop decodes and
aggregates whole fetches with numpy. Faust has no public way to (a) keep its own fetcher away
from some partitions it assigned, (b) pull a partition's fetched record batches, or (c) set
aiokafka's ``fetch_max_wait_ms``. So:

* :class:`BatchConsumer` overrides Faust's private hooks ``_set_active_tps`` (the partitions
  its fetcher reads) and ``_new_consumer_thread``, leaving :attr:`BatchOptions.topics` alone;
* :class:`BatchFetcher` calls the consumer thread's ``_fetch_records`` on the aiokafka consumer
  Faust keeps in ``Consumer._thread._consumer`` (aiokafka ``Fetcher.fetched_records``: the
  record batches already fetched, no per-event hand-off), and commits through that consumer;
* :class:`BatchConsumerThread` sets aiokafka's ``_fetch_max_wait_ms`` after Faust built it, and
  closes aiokafka's client itself when aiokafka's consumer stop raised midway (see
  :meth:`BatchConsumerThread.on_thread_stop`).

The rest of the package talks to :class:`BatchFetcher`, which knows nothing of the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as _AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Transport as _AIOKafkaTransport
from faust.types import TP

from iot_common.stream_errors import kafka_unavailable

log = logging.getLogger(__name__)

#: Records per partition, as aiokafka hands them over.
RecordBatches = Mapping[TP, list[ConsumerRecord[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """What the batch consumer needs to know, typed (instead of attributes on the app)."""

    #: Topics whose partitions the batch loop reads; Faust's fetcher leaves them alone.
    topics: frozenset[str]
    #: How long the broker may hold a fetch that found nothing (aiokafka's
    #: ``fetch_max_wait_ms``; Faust hard-codes 1500 ms).
    fetch_max_wait_ms: int


class BatchConsumerThread(AIOKafkaConsumerThread):
    """Faust's consumer thread with a short broker-side fetch wait.

    Faust hard-codes ``fetch_max_wait_ms=1500``. Tansu answers a fetch that found no data only
    when that wait runs out, not when data arrives, so a record produced just after a fetch
    went out waits for it: measured here, 1.5 s gave a median of 0.37 s from produce to
    consume (max 0.75 s), 50 ms gave 11 ms (max 30 ms).
    """

    def __init__(self, consumer: BatchConsumer, *, options: BatchOptions, **kwargs: Any) -> None:
        self.options = options
        super().__init__(consumer, **kwargs)

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.options.fetch_max_wait_ms  # noqa: SLF001
        return consumer

    async def on_thread_stop(self) -> None:
        """Stop the method queue and the aiokafka consumer, even when aiokafka raises a
        ``CancelledError`` of its own while stopping.

        With the broker gone, aiokafka's fetch requests fail at once and each waits out its
        retry backoff (0.1 s); its ``Fetcher.close`` cancels that task and awaits it, and the
        task's ``CancelledError`` comes out of ``AIOKafkaConsumer.stop`` (aiokafka issue 647).
        Let through, it ended the consumer thread before it told the worker it had shut down,
        and the worker waited mode's ``shutdown_timeout`` (60 s) for it before exiting:
        61.8 s from SIGTERM to exit, measured. Nothing is committed here either way.
        """
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this stop itself is being cancelled
            log.warning("the Kafka consumer stopped with a CancelledError of its own fetch task")
            consumer = self._consumer
            if consumer is not None:
                # What AIOKafkaConsumer.stop would have done after its fetcher: close the
                # client (its connections and metadata task).
                with contextlib.suppress(Exception):
                    await consumer._client.close()  # noqa: SLF001


class BatchConsumer(_AIOKafkaConsumer):
    """Faust's consumer, minus the partitions the batch loop reads itself."""

    def __init__(self, *args: Any, options: BatchOptions, **kwargs: Any) -> None:
        # Set before Faust's constructor: it creates the consumer thread, which needs them.
        self.options = options
        super().__init__(*args, **kwargs)

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return BatchConsumerThread(self, options=self.options, loop=self.loop, beacon=self.beacon)

    def _set_active_tps(self, tps: set[TP]) -> set[TP]:
        active = super()._set_active_tps(tps)
        own = self.options.topics
        active.difference_update({tp for tp in active if tp.topic in own})
        return active

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        own = self.options.topics
        super().resume_partitions([tp for tp in tps if tp.topic not in own])


class BatchTransport(_AIOKafkaTransport):
    """Faust's aiokafka transport, building :class:`BatchConsumer` with its options."""

    Consumer = BatchConsumer

    def __init__(self, *args: Any, options: BatchOptions, **kwargs: Any) -> None:
        self.options = options
        super().__init__(*args, **kwargs)

    def create_consumer(self, callback: Any, **kwargs: Any) -> Any:
        return super().create_consumer(callback, options=self.options, **kwargs)


class BatchApp(faust.App):
    """faust.App whose consumer leaves :attr:`BatchOptions.topics` to the batch loop."""

    def __init__(self, id: str, *, batch: BatchOptions, **options: Any) -> None:
        self.batch = batch
        super().__init__(id, **options)

    def _new_transport(self) -> Any:
        # Faust's factory hook for its consumer transport (no public way to pick the class).
        return BatchTransport(self.conf.broker_consumer, self, options=self.batch)


class Fetched:
    """One fetch's records, with the aiokafka consumer that fetched them (for highwaters)."""

    __slots__ = ("_consumer", "records")

    def __init__(self, records: RecordBatches, consumer: AIOKafkaConsumer) -> None:
        self.records = records
        self._consumer = consumer

    def highwater(self, tp: TP) -> int | None:
        hw: int | None = self._consumer.highwater(tp)
        return hw


class BatchFetcher:
    """Pulls record batches of the partitions Faust assigned to this worker, and commits."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    def _thread(self) -> AIOKafkaConsumerThread:
        thread: AIOKafkaConsumerThread = self._app.consumer._thread  # type: ignore[attr-defined]  # noqa: SLF001
        return thread

    def topic_partitions(self, topic: str) -> int | None:
        """Partition count of ``topic`` as the consumer's metadata knows it."""
        n: int | None = self._app.consumer.topic_partitions(topic)
        return n

    async def fetch(
        self, tps: Iterable[TP], *, max_wait: float, max_records: int
    ) -> Fetched | None:
        """Records fetched for ``tps`` (waiting up to ``max_wait`` seconds); None while the consumer
        is not connected."""
        thread = self._thread()
        aio = thread._consumer  # noqa: SLF001
        if aio is None:
            return None
        records: RecordBatches = await thread.call_thread(
            thread._fetch_records,  # noqa: SLF001
            aio,
            set(tps),
            timeout=max_wait,
            max_records=max_records,
        )
        return Fetched(records, aio)

    def seek(self, positions: Mapping[TP, int]) -> None:
        """Read each partition from its offset on at the next fetch.

        Called from the agents' event loop, as Faust's own ``AIOKafkaConsumerThread.seek``
        does: aiokafka's seek only records the position for the fetcher. A partition no longer
        assigned is left to its new owner (aiokafka refuses the seek).
        """
        aio = self._thread()._consumer  # noqa: SLF001
        if aio is None:
            return  # a new consumer starts from the committed offsets anyway
        for tp, offset in positions.items():
            try:
                aio.seek(tp, offset)
            except (IllegalStateError, AssertionError):
                # aiokafka asserts when it has no assignment at all (mid-rebalance).
                log.info(
                    "%s[%d] not assigned now: not sought to %d", tp.topic, tp.partition, offset
                )

    async def commit(self, topic: str, offsets: Mapping[int, int]) -> bool:
        """Commit ``partition → offset`` of ``topic``; False when there is no consumer, nothing
        to commit, or a rebalance is in progress (the next tick commits again)."""
        thread = self._thread()
        aio = thread._consumer  # noqa: SLF001
        if aio is None:
            return False
        payload = {TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}
        if not payload:
            return False
        try:
            await thread.call_thread(aio.commit, payload)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit of %s skipped (rebalance in progress): %s", offsets, exc)
            return False
        except KafkaError as exc:
            if not kafka_unavailable(exc):
                raise
            log.warning("commit of %s skipped (Kafka unavailable): %s", offsets, exc)
            return False
        return True
