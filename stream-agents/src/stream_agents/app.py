"""The Faust app: agents on ``telemetry.raw``, ``device.events`` and ``alerts``; web on 6066.

The hot path stays inside Faust (its consumer group, assignment callbacks, worker CLI, web
server) but does not go through Faust's per-event streams: the ``telemetry`` agent pulls whole
record batches of the partitions Faust assigned to this worker straight from Faust's consumer
(``Consumer._thread`` → aiokafka ``fetched_records``), decodes them in bulk and aggregates
with numpy. Faust's own fetcher is told to leave those partitions alone
(:class:`BatchConsumer`), so every record is read once. Measured on this machine (see
``benchmarks/bench_agents.py``): Faust's ``stream.take()`` path tops out at ~7,400 records/s
because of per-event hand-offs; the batch pull costs what aiokafka's ``getmany`` costs.

Offsets of ``telemetry.raw`` are committed by the pipeline (never by Faust's ack tracking):
only up to what is durably in the store (see :mod:`stream_agents.windows`). ``device.events``
and ``alerts`` are low-rate and use ordinary per-event Faust agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import faust
import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as _AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Transport as _AIOKafkaTransport
from faust.types import TP
from prometheus_client import REGISTRY, Counter, generate_latest

from iot_common.events import AlertStatus, alert_decoder, device_event_decoder
from monitoring_store.base import DeviceRules, MonitoringStore
from stream_agents.alerts import AlertEngine, ClosedWindow
from stream_agents.config import AgentSettings, get_settings
from stream_agents.pipeline import TelemetryPipeline
from stream_agents.windows import WindowConfig

log = logging.getLogger(__name__)

EVENTS = Counter("agents_device_events_total", "device.events records", ["outcome"])
EXTERNAL_ALERTS = Counter("agents_alert_records_total", "alerts records consumed")


class BatchConsumerThread(AIOKafkaConsumerThread):
    """Faust's consumer thread with a short broker-side fetch wait.

    Faust hard-codes ``fetch_max_wait_ms=1500``. Tansu answers a fetch that found no data only
    when that wait runs out, not when data arrives, so a record produced just after a fetch
    went out waits for it: measured here, 1.5 s gave a median of 0.37 s from produce to
    consume (max 0.75 s), 50 ms gave 11 ms (max 30 ms).
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.consumer.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)
        return consumer


class BatchConsumer(_AIOKafkaConsumer):
    """Faust's consumer, minus the partitions the batch loop reads itself."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _batch_topics(self) -> frozenset[str]:
        return getattr(self.app, "batch_topics", frozenset())

    def _set_active_tps(self, tps: set[TP]) -> set[TP]:
        active = super()._set_active_tps(tps)
        own = self._batch_topics()
        active.difference_update({tp for tp in active if tp.topic in own})
        return active

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        own = self._batch_topics()
        super().resume_partitions([tp for tp in tps if tp.topic not in own])


class BatchTransport(_AIOKafkaTransport):
    Consumer = BatchConsumer


class KafkaPublisher:
    """Batched producing (aiokafka batch API; partition = murmur2(key) like Java clients)."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            linger_ms=5,
            max_batch_size=512 * 1024,
            acks="all",
            enable_idempotence=False,
        )
        self._parts: dict[str, int] = {}
        #: key → partition per partition count (topics may differ: ``telemetry.raw`` with 8
        #: partitions, an auto-created ``alerts`` with 1). Keyed by count, not topic: topics
        #: with the same count share the murmur2 results.
        self._pcache: dict[int, dict[bytes, int]] = {}

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

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
            batch = self.producer.create_batch()
            for key, value in recs:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await self.producer.send_batch(batch, topic, partition=p))
                    batch = self.producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            futures.append(await self.producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)


class AgentsApp(faust.App):
    """faust.App whose consumer leaves ``batch_topics`` to the batch loop."""

    batch_topics: frozenset[str] = frozenset()
    fetch_max_wait_ms: int | None = None
    runtime: Runtime

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        await super().on_stop()
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            await runtime.close()


class Runtime:
    """What the agents share: store, publisher, pipeline, alert engine, assignment."""

    def __init__(
        self, app: AgentsApp, settings: AgentSettings, store: MonitoringStore | None
    ) -> None:
        self.app = app
        self.settings = settings
        self._store = store
        self.topics = settings.topics
        self.ready = asyncio.Event()
        self.tps: set[TP] = set()
        self.paused = True
        self.started_at = time.time()
        self.publisher: KafkaPublisher | None = None
        self.pipeline: TelemetryPipeline | None = None
        self.store: MonitoringStore | None = None
        self.owned_partitions: set[int] = set()
        self.n_partitions = settings.topic_partitions
        self.last_tick = 0.0
        self.tick_lock = asyncio.Lock()

    async def start(self) -> None:
        s = self.settings
        if self._store is None:
            from monitoring_store import open_store

            self._store = open_store(s.monitoring_store_url)
        store = self._store
        assert store is not None
        await store.start()
        self.store = store
        self.publisher = KafkaPublisher(s.kafka_bootstrap)
        await self.publisher.start()
        engine = AlertEngine(default_rules=dict(s.default_rules))
        now = time.time()
        for dr in await store.load_device_rules():
            engine.set_device(dr, now=now)
        for status in (AlertStatus.ACTIVE, AlertStatus.ACKNOWLEDGED):
            engine.hydrate(await store.query_alerts(status=status, limit=1_000_000))
        self.pipeline = TelemetryPipeline(
            store=store,
            publisher=self.publisher,
            topics=self.topics,
            window_config=WindowConfig(
                sizes=tuple(s.window_sizes),
                allowed_lateness=s.allowed_lateness,
                reorder_slack=s.reorder_slack,
                idle_close_after=s.idle_close_seconds,
                open_update_fraction=s.open_update_fraction,
            ),
            raw_samples=s.raw_samples,
            alerts=engine,
        )
        self.pipeline.assign(self.owned_partitions)
        if self.owned_partitions:
            await self.seed_alert_history()
        self.ready.set()
        log.info(
            "stream agents ready: %d device rule sets, windows %s",
            len(engine.devices),
            s.window_sizes,
        )

    async def close(self) -> None:
        if self.pipeline is not None:
            try:
                await self.pipeline.drain()
            except Exception:
                log.exception("pending raw-sample writes failed at shutdown")
        if self.publisher is not None:
            await self.publisher.stop()
        if self.store is not None:
            await self.store.close()

    # -- assignment (Faust callbacks) ------------------------------------------------------
    async def on_assigned(self, assigned: set[TP]) -> None:
        mine = {tp for tp in assigned if tp.topic == self.topics.telemetry_raw}
        self.tps = mine
        self.owned_partitions = {tp.partition for tp in mine}
        n = self.app.consumer.topic_partitions(self.topics.telemetry_raw)
        if n:
            self.n_partitions = n
        if self.pipeline is not None:
            async with self.pipeline.lock:
                self.pipeline.assign(self.owned_partitions)
            await self.seed_alert_history()
        self.paused = False
        log.info("telemetry partitions assigned: %s", sorted(self.owned_partitions))

    async def seed_alert_history(self) -> None:
        """Rebuild window-rule evaluation history (consecutive hits, previous means) of the
        devices this worker owns from their last stored closed windows, so a restart or a
        rebalance does not reset "N consecutive windows"."""
        if self.pipeline is None or self.store is None:
            return
        engine = self.pipeline.alerts
        store = self.store
        queries = engine.history_queries(self.owns_device)
        if not queries:
            return
        now = time.time()
        sem = asyncio.Semaphore(8)

        async def fetch(dev: str, metric: str, size: int, n: int) -> list[ClosedWindow]:
            async with sem:
                ws = await store.query_windows(
                    dev,
                    metrics=[metric],
                    window_seconds=size,
                    start=now - max(3600.0, size * (n + 1) * 20.0),
                    end=4e9,
                )
            return [
                ClosedWindow(
                    w.device_id,
                    w.metric,
                    w.window_seconds,
                    w.window_start,
                    {
                        "mean": w.mean,
                        "min": w.min,
                        "max": w.max,
                        "p50": w.p50,
                        "p95": w.p95,
                        "last": w.last,
                    },
                )
                for w in [w for w in ws if w.final][-(n + 1) :]
            ]

        try:
            found = await asyncio.gather(*(fetch(*q) for q in queries))
        except Exception:
            log.exception("could not rebuild alert rule history from the store")
            return
        windows = [w for ws in found for w in ws]
        engine.seed(windows)
        log.info(
            "alert rule history rebuilt from %d stored windows (%d series)",
            len(windows),
            len(queries),
        )

    async def on_revoked(self, revoked: set[TP]) -> None:
        self.paused = True

    def owns_device(self, device_id: str) -> bool:
        p = (murmur2(device_id.encode()) & 0x7FFFFFFF) % max(self.n_partitions, 1)
        return p in self.owned_partitions

    # -- hot path --------------------------------------------------------------------------
    async def fetch_loop(self) -> None:
        await self.ready.wait()
        s = self.settings
        pipeline = self.pipeline
        assert pipeline is not None
        while not self.app.should_stop:
            tps = self.tps
            if self.paused or not tps:
                await asyncio.sleep(0.05)
                continue
            thread = self.app.consumer._thread  # type: ignore[attr-defined]
            aio = thread._consumer
            if aio is None:
                await asyncio.sleep(0.05)
                continue
            records: Mapping[Any, list[Any]] = await thread.call_thread(
                thread._fetch_records,
                aio,
                set(tps),
                timeout=s.batch_timeout,
                max_records=s.batch_max_records,
            )
            for tp in tps:
                st = pipeline.partitions.get(tp.partition)
                if st is not None:
                    hw = aio.highwater(tp)
                    st.caught_up = (
                        hw is not None and st.next_offset is not None and st.next_offset >= hw
                    )
            if not records:
                continue
            async with pipeline.lock:
                if self.paused:
                    # A rebalance started while fetching: put the records back so that a
                    # partition kept by this worker resumes exactly here.
                    for tp, recs in records.items():
                        with contextlib.suppress(KafkaError, AssertionError):
                            aio.seek(tp, recs[0].offset)
                    continue
                for tp, recs in records.items():
                    if (
                        tp.topic == self.topics.telemetry_raw
                        and tp.partition in pipeline.partitions
                    ):
                        try:
                            await pipeline.handle(tp.partition, recs)
                        except (KafkaError, OSError):
                            raise
                        except Exception:
                            # Bad data is dead-lettered inside handle(); this is a bug or an
                            # outage. Seek back so that nothing is skipped when the supervisor
                            # restarts the agent; the offsets stay uncommitted.
                            state = pipeline.partitions.get(tp.partition)
                            if state is not None and state.next_offset is not None:
                                aio.seek(tp, state.next_offset)
                            else:
                                aio.seek(tp, recs[0].offset)
                            log.exception(
                                "failed to process %s[%d] offsets %d..%d",
                                tp.topic,
                                tp.partition,
                                recs[0].offset,
                                recs[-1].offset,
                            )
                            raise

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        thread = self.app.consumer._thread  # type: ignore[attr-defined]
        aio = thread._consumer
        if aio is None or self.paused:
            return False
        topic = self.topics.telemetry_raw
        payload = {
            TopicPartition(topic, p): OffsetAndMetadata(o, "")
            for p, o in offsets.items()
            if p in self.owned_partitions
        }
        if not payload:
            return False
        try:
            await thread.call_thread(aio.commit, payload)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit of %s skipped (rebalance in progress): %s", offsets, exc)
            return False
        return True

    async def tick(self) -> None:
        if self.pipeline is None or self.paused:
            return
        async with self.tick_lock:
            await self.pipeline.tick(self.commit)
        self.last_tick = time.time()

    async def check_silent(self) -> None:
        if self.pipeline is None or self.paused:
            return
        changes = self.pipeline.alerts.check_silent(time.time(), self.owns_device)
        if changes:
            await self.pipeline.publish_alerts(changes)

    async def reload_rules(self) -> None:
        if self.pipeline is None or self.store is None:
            return
        now = time.time()
        for dr in await self.store.load_device_rules():
            self.pipeline.alerts.set_device(dr, now=now)

    async def on_device_event(self, raw: bytes) -> None:
        assert self.pipeline is not None and self.store is not None
        try:
            ev = device_event_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            EVENTS.labels("invalid").inc()
            log.warning("undecodable device event ignored: %s", exc)
            return
        dev = ev.device or {}
        if ev.event_type in ("device.created", "device.updated") and dev:
            dr = DeviceRules(
                device_id=ev.device_id,
                owner_id=dev.get("owner_id", ev.owner_id),
                device_type=dev.get("type"),
                config=dev.get("config") or {},
                version=int(dev.get("config_version") or 0),
                active=bool(dev.get("active", True)),
            )
        elif ev.event_type == "device.deleted":
            dr = DeviceRules(
                device_id=ev.device_id,
                owner_id=dev.get("owner_id", ev.owner_id),
                device_type=dev.get("type"),
                config=dev.get("config") or {},
                version=int(dev.get("config_version") or 0),
                active=False,
            )
        else:
            EVENTS.labels("ignored").inc()
            return
        await self.store.upsert_device_rules([dr])
        self.pipeline.alerts.set_device(dr, now=time.time())
        EVENTS.labels("applied").inc()

    def on_alert(self, raw: bytes) -> None:
        assert self.pipeline is not None
        try:
            a = alert_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        EXTERNAL_ALERTS.inc()
        self.pipeline.alerts.apply_external(a)

    def health(self) -> dict[str, Any]:
        p = self.pipeline
        return {
            "status": "ok" if self.ready.is_set() else "starting",
            "partitions": sorted(self.owned_partitions),
            "counts": vars(p.counts) if p else {},
            "last_tick_age": round(time.time() - self.last_tick, 3) if self.last_tick else None,
        }


def create_app(
    settings: AgentSettings | None = None, *, store: MonitoringStore | None = None
) -> AgentsApp:
    """Build the Faust app (``store`` lets tests hand in their own store)."""
    s = settings or get_settings()
    topics = s.topics
    datadir = os.path.join(tempfile.gettempdir(), f"stream-agents-{s.app_id}-{os.getpid()}")
    app = AgentsApp(
        s.app_id,
        broker=f"kafka://{s.kafka_bootstrap}",
        store="memory://",
        web_port=s.web_port,
        web_bind=s.web_host,
        web_enabled=True,
        topic_partitions=s.topic_partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.broker_session_timeout,
        broker_rebalance_timeout=s.broker_rebalance_timeout,
        broker_heartbeat_interval=s.broker_heartbeat_interval,
        broker_request_timeout=max(30.0, s.broker_session_timeout + 5),
        broker_max_poll_records=s.batch_max_records,
        consumer_max_fetch_size=4 * 1024 * 1024,
        datadir=datadir,
        autodiscover=False,
    )
    app.batch_topics = frozenset({topics.telemetry_raw})
    app.fetch_max_wait_ms = s.fetch_max_wait_ms
    runtime = Runtime(app, s, store)
    app.runtime = runtime

    def topic(name: str) -> faust.TopicT:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.topic_partitions,
        )

    telemetry_topic = topic(topics.telemetry_raw)
    device_events_topic = topic(topics.device_events)
    alerts_topic = topic(topics.alerts)
    # Declared so they exist before the first produce.
    topic(topics.stats_windows)
    topic(topics.telemetry_deadletter)

    @app.agent(telemetry_topic, name="telemetry")
    async def telemetry(stream: faust.StreamT[bytes]) -> None:
        """Batch loop over this worker's telemetry.raw partitions (not per event)."""
        await runtime.fetch_loop()

    @app.agent(device_events_topic, name="device-events")
    async def device_events(stream: faust.StreamT[bytes]) -> None:
        await runtime.ready.wait()
        async for value in stream:
            try:
                await runtime.on_device_event(value)
            except Exception:
                log.exception("device event not applied")
                raise

    @app.agent(alerts_topic, name="alerts")
    async def alerts(stream: faust.StreamT[bytes]) -> None:
        await runtime.ready.wait()
        async for value in stream:
            runtime.on_alert(value)

    @app.task  # type: ignore[untyped-decorator]
    async def start_runtime() -> None:
        await runtime.start()

    @app.timer(s.emit_interval)  # type: ignore[untyped-decorator]
    async def emit() -> None:
        await runtime.tick()

    @app.timer(s.silent_check_seconds)  # type: ignore[untyped-decorator]
    async def silent() -> None:
        await runtime.check_silent()

    @app.timer(s.rules_reload_seconds)  # type: ignore[untyped-decorator]
    async def reload_rules() -> None:
        await runtime.reload_rules()

    @app.timer(3600.0)  # type: ignore[untyped-decorator]
    async def retention() -> None:
        if runtime.store is not None and s.raw_samples:
            n = await runtime.store.delete_samples_before(time.time() - s.raw_retention_seconds)
            log.info("raw-sample retention removed %d samples", n)

    async def _assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        await runtime.on_assigned(assigned)

    async def _revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        await runtime.on_revoked(revoked)

    app.on_partitions_assigned.connect(cast(Any, _assigned))
    app.on_partitions_revoked.connect(cast(Any, _revoked))

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        body = runtime.health()
        return web.json(body, status=200 if body["status"] == "ok" else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp wants the charset apart from the media type.
        return web.text(generate_latest(REGISTRY).decode(), content_type="text/plain")

    return app
