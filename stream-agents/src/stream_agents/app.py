"""The Faust app: agents on ``telemetry.raw``, ``device.events``, ``alerts`` and
``telemetry.deadletter``; web on 6066.

The hot path stays inside Faust (its consumer group, assignment callbacks, worker CLI, web
server) but does not go through Faust's per-event streams: the ``telemetry`` agent runs the
batch loop (:mod:`stream_agents.telemetry_loop`), which pulls whole record batches of the
partitions Faust assigned to this worker (:mod:`stream_agents.batch_consumer`), decodes them
in bulk and aggregates with numpy. Measured on this machine (see
``benchmarks/bench_agents.py``): Faust's ``stream.take()`` path tops out at ~7,400 records/s
because of per-event hand-offs; the batch pull costs what aiokafka's ``getmany`` costs.
``device.events`` and ``alerts`` are low-rate and use ordinary per-event Faust agents;
``telemetry.deadletter`` is taken in batches of up to 1,000 (one store write each).

This module only wires Faust to :class:`~stream_agents.runtime.Runtime`'s services.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from faust.types import TP
from prometheus_client import REGISTRY, generate_latest

from iot_common.stream_errors import (
    ProcessingErrorCallback,
    RecordRef,
    default_on_processing_error,
)
from monitoring_store.base import MonitoringStore
from stream_agents.batch_consumer import BatchApp, BatchFetcher, BatchOptions
from stream_agents.config import AgentSettings, get_settings
from stream_agents.publisher import KafkaPublisher, PublisherService
from stream_agents.runtime import Runtime


class AgentsApp(BatchApp):
    """The agents' Faust app; ``stopping`` runs as its stop begins, ``closing`` after Faust's
    own shutdown steps."""

    def __init__(self, id: str, *, batch: BatchOptions, **options: Any) -> None:
        super().__init__(id, batch=batch, **options)
        self.stopping: list[Callable[[], None]] = []
        self.closing: list[Callable[[], Awaitable[None]]] = []

    async def on_stop(self) -> None:
        for begin in self.stopping:
            begin()
        await super().on_stop()
        for close in self.closing:
            await close()


def create_app(
    settings: AgentSettings | None = None,
    *,
    store: MonitoringStore | None = None,
    publisher: PublisherService | None = None,
    on_processing_error: ProcessingErrorCallback = default_on_processing_error,
) -> AgentsApp:
    """Build the Faust app (``store`` and ``publisher`` let tests hand in their own;
    ``on_processing_error`` decides about a record whose decoding raised)."""
    s = settings or get_settings()
    topics = s.topics
    datadir = os.path.join(tempfile.gettempdir(), f"stream-agents-{s.app_id}-{os.getpid()}")
    app = AgentsApp(
        s.app_id,
        batch=BatchOptions(
            topics=frozenset({topics.telemetry_raw}), fetch_max_wait_ms=s.fetch_max_wait_ms
        ),
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
    if store is None:
        from monitoring_store import open_store

        store = open_store(s.monitoring_store_url.get_secret_value())
    runtime = Runtime(
        settings=s,
        store=store,
        publisher=publisher or KafkaPublisher(s.kafka_bootstrap),
        fetcher=BatchFetcher(app),
        should_stop=lambda: app.should_stop,
        on_processing_error=on_processing_error,
    )
    app.closing.append(runtime.stop)

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
    deadletter_topic = topic(topics.telemetry_deadletter)
    # Declared so it exists before the first produce.
    topic(topics.stats_windows)

    @app.agent(telemetry_topic, name="telemetry")
    async def telemetry(stream: faust.StreamT[bytes]) -> None:
        """Batch loop over this worker's telemetry.raw partitions (not per event)."""
        await runtime.run_telemetry()

    @app.agent(device_events_topic, name="device-events")
    async def device_events(stream: faust.StreamT[bytes]) -> None:
        await runtime.ready.wait()
        async for event in stream.events():
            m = event.message
            where = RecordRef(m.topic, m.partition, m.offset, m.key, m.value)
            await runtime.on_device_event(event.value, where)

    @app.agent(alerts_topic, name="alerts")
    async def alerts(stream: faust.StreamT[bytes]) -> None:
        await runtime.ready.wait()
        async for value in stream:
            runtime.alert_feed.on_record(value)

    @app.agent(deadletter_topic, name="deadletters")
    async def deadletters(stream: faust.StreamT[bytes]) -> None:
        """Refused messages → the store, in batches (acknowledged once stored)."""
        await runtime.ready.wait()
        # take_events is Stream's (since Faust 0.10), missing from the StreamT protocol.
        async for events in stream.take_events(1000, within=0.5):  # type: ignore[attr-defined]
            await runtime.on_deadletters(
                [
                    RecordRef(
                        e.message.topic,
                        e.message.partition,
                        e.message.offset,
                        e.message.key,
                        e.message.value,
                    )
                    for e in events
                ]
            )

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
        await runtime.enforce_retention()

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
