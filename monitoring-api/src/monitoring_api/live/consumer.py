"""The Kafka consumer of live pushes: windows, alerts and device events, handed to the hub.

Alert changes are also handed on for webhook fan-out. Nothing is dropped there: when enqueueing
fails (a store outage), the batch is held and retried until it is stored, and the partition it
came from is paused meanwhile, so later changes of that partition wait behind it instead of
overtaking it; windows and device events keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import Counter, Histogram

from iot_common.events import Alert, alert_decoder, device_event_decoder, window_decoder
from iot_common.topics import Topics
from monitoring_api.live.hub import LiveHub

log = logging.getLogger(__name__)

CONSUMED = Counter("monitoring_api_records_consumed_total", "Kafka records consumed", ["topic"])
UNDECODABLE = Counter(
    "monitoring_api_records_undecodable_total", "Kafka records that failed to decode", ["topic"]
)
PUSH_DELAY = Histogram(
    "monitoring_api_push_delay_seconds",
    "From a record's Kafka timestamp to its push being queued to every client",
    ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ENQUEUE_FAILURES = Counter(
    "monitoring_api_webhook_enqueue_failures_total",
    "Failed attempts to store the webhook deliveries of a batch of alert changes (retried)",
)


async def ensure_topics(bootstrap: str, topics: Sequence[str], partitions: int) -> None:
    """Create the topics the API reads if they do not exist yet (an existing one is kept)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(Exception):
                await admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
    finally:
        await admin.close()


class LiveConsumer:
    """Reads ``stats.windows``, ``alerts`` and ``device.events`` and hands batches on."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Topics,
        group_id: str,
        hub: LiveHub,
        on_alerts: Callable[[Sequence[Alert]], Awaitable[Any]] | None = None,
        partitions: int = 6,
        retry_base: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self.group_id = group_id
        self._hub = hub
        self._on_alerts = on_alerts
        self._partitions = partitions
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self._names: list[str] = []
        #: Alert changes whose webhook deliveries are not stored yet, per paused partition,
        #: in the order they were read.
        self._held: dict[TopicPartition, list[Alert]] = {}
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._retry_delay = retry_base
        self._retry_at = 0.0

    async def start(self) -> None:
        self._names = [
            self._topics.stats_windows,
            self._topics.alerts,
            self._topics.device_events,
        ]
        try:
            await asyncio.wait_for(self._connect(), timeout=15)
        except Exception as exc:
            # The API still answers queries without the bus; /health says "kafka": "starting".
            log.warning(
                "Kafka not reachable at %s (%s); retrying in the background", self._bootstrap, exc
            )
            await self._drop_consumer()
            self._task = asyncio.create_task(self._connect_then_run(), name="live-consumer")
            return
        self._task = asyncio.create_task(self._run(), name="live-consumer")

    async def _connect(self) -> None:
        try:
            await ensure_topics(self._bootstrap, self._names, self._partitions)
        except Exception as exc:
            log.warning("could not check/create topics %s: %s", self._names, exc)
        # Every partition is assigned directly (no group rebalance to wait for): each instance
        # reads everything from the end, under its own group id, as a unique group would.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self.group_id,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            max_poll_records=5000,
            # Tansu holds an empty fetch for the whole wait even when records arrive
            # meanwhile: the wait is added to a push's latency (about half of it on average).
            fetch_max_wait_ms=20,
        )
        await self._consumer.start()
        await self._assign_new_partitions()
        self.ready.set()

    async def _drop_consumer(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None

    async def _connect_then_run(self) -> None:
        delay = 1.0
        while True:
            try:
                await asyncio.wait_for(self._connect(), timeout=15)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Kafka still not reachable (%s); next try in %.0f s", exc, delay)
                await self._drop_consumer()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        log.info("live consumer connected to %s", self._bootstrap)
        await self._run()

    async def _assign_new_partitions(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        await consumer.topics()  # refresh metadata
        current: set[TopicPartition] = set(consumer.assignment())
        wanted = set(current)
        for topic in self._names:
            for p in consumer.partitions_for_topic(topic) or ():
                wanted.add(TopicPartition(topic, p))
        new = wanted - current
        if not new:
            return
        consumer.assign(list(wanted))
        if self._held:
            consumer.pause(*self._held)  # assign() resumes every partition
        await consumer.seek_to_end(*new)
        for tp in new:
            await consumer.position(tp)  # resolve "end" now: later records are all seen
        log.info("live consumer %s reads %d partitions", self.group_id, len(wanted))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_consumer()

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        t = self._topics
        last_refresh = time.monotonic()
        while True:
            try:
                if time.monotonic() - last_refresh > 30:
                    last_refresh = time.monotonic()
                    await self._assign_new_partitions()
                await self._retry_held(consumer)
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, records in batches.items():
                    CONSUMED.labels(tp.topic).inc(len(records))
                    produced_at = records[-1].timestamp / 1000
                    if tp.topic == t.stats_windows:
                        await self._hub.push_windows(
                            self._decode(records, window_decoder, tp.topic)
                        )
                    elif tp.topic == t.alerts:
                        alerts = await self._hub.push_alerts(
                            self._decode(records, alert_decoder, tp.topic)
                        )
                        if self._on_alerts is not None and alerts:
                            await self._hand_on(consumer, tp, alerts, records[-1].offset)
                    elif tp.topic == t.device_events:
                        await self._hub.push_device_events(
                            self._decode(records, device_event_decoder, tp.topic)
                        )
                    PUSH_DELAY.labels(tp.topic).observe(max(0.0, time.time() - produced_at))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live consumer round failed")
                await asyncio.sleep(0.5)

    async def _hand_on(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, alerts: list[Alert], offset: int
    ) -> None:
        """Enqueue the webhook deliveries of ``alerts``, or hold them and pause ``tp``."""
        assert self._on_alerts is not None
        if tp in self._held:  # fetched before the pause took effect: stays behind the held
            self._held[tp].extend(alerts)
            return
        try:
            await self._on_alerts(alerts)
            return
        except Exception as exc:
            ENQUEUE_FAILURES.inc()
            log.warning(
                "enqueueing webhook deliveries failed at %s offset %d; holding %d alert "
                "changes and pausing the partition until the store takes them: %s",
                tp,
                offset,
                len(alerts),
                exc,
            )
        self._held[tp] = list(alerts)
        consumer.pause(tp)
        self._schedule_retry()

    async def _retry_held(self, consumer: AIOKafkaConsumer) -> None:
        """Try the held batches again once their backoff is over; resume what got stored."""
        if not self._held or time.monotonic() < self._retry_at:
            return
        assert self._on_alerts is not None
        for tp, alerts in list(self._held.items()):
            try:
                await self._on_alerts(alerts)
            except Exception as exc:
                ENQUEUE_FAILURES.inc()
                log.warning(
                    "enqueueing %d held alert changes of %s failed again (next try in %.1f s): %s",
                    len(alerts),
                    tp,
                    self._retry_delay,
                    exc,
                )
                self._schedule_retry()
                return
            del self._held[tp]
            consumer.resume(tp)
            log.info(
                "stored the webhook deliveries of %d held alert changes of %s", len(alerts), tp
            )
        self._retry_delay = self._retry_base

    def _schedule_retry(self) -> None:
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self._retry_max)

    @staticmethod
    def _decode(
        records: Sequence[Any], decoder: msgspec.json.Decoder[Any], topic: str
    ) -> list[Any]:
        out = []
        for r in records:
            try:
                out.append(decoder.decode(r.value))
            except (msgspec.DecodeError, TypeError):
                UNDECODABLE.labels(topic).inc()
                log.warning(
                    "undecodable record on %s partition %d offset %d", topic, r.partition, r.offset
                )
        return out
