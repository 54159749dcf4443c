"""The pipeline's error callback, in-process against the real store and broker: it decides
about a record that breaks decoding, and a batch it refuses is taken not at all."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from agents_testkit import envelope, read_topic
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from iot_common.events import WindowStats, window_decoder
from iot_common.stream_errors import RecordRef
from iot_common.telemetry import DeadLetterReason, deadletter_decoder
from iot_common.topics import Topics
from monitoring_store import open_store
from stream_agents import pipeline as pipeline_module
from stream_agents.pipeline import TelemetryPipeline
from stream_agents.publisher import KafkaPublisher


@pytest.fixture
async def pipeline(
    kafka_bootstrap: str, topic_prefix: str, pg_database_factory: Callable[[str], str]
) -> AsyncIterator[TelemetryPipeline]:
    topics = Topics(f"{topic_prefix}{secrets.token_hex(3)}.")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1) for n in topics.all()])
    finally:
        await admin.close()
    store = open_store(pg_database_factory("agents"))
    await store.start()
    publisher = KafkaPublisher(kafka_bootstrap)
    await publisher.start()
    p = TelemetryPipeline(store=store, publisher=publisher, topics=topics)
    p.assign({0})
    yield p
    await p.drain()
    await publisher.stop()
    await store.close()


def _records(topic: str, values: list[tuple[bytes, bytes]]) -> list[ConsumerRecord[bytes, bytes]]:
    now_ms = int(time.time() * 1000)
    return [
        ConsumerRecord(topic, 0, i, now_ms, 0, key, value, None, len(key), len(value), [])
        for i, (key, value) in enumerate(values)
    ]


async def test_the_error_callback_decides_about_a_record_that_breaks_decoding(
    pipeline: TelemetryPipeline, kafka_bootstrap: str
) -> None:
    now = time.time()
    topic = pipeline.topics.telemetry_raw
    bad = envelope("cb-bad", now, [(now, {"temp": 1.0})], [2**63])
    recs = _records(
        topic,
        [
            (b"cb-1", envelope("cb-1", now, [(now, {"temp": 1.0})])),
            (b"cb-bad", bad),
            (b"cb-2", envelope("cb-2", now, [(now, {"temp": 2.0, "hum": 3.0})])),
        ],
    )
    asked: list[tuple[type[Exception], RecordRef]] = []

    def strict(exc: Exception, rec: RecordRef, logger: logging.Logger) -> bool:
        asked.append((type(exc), rec))
        return False

    pipeline.on_processing_error = strict
    with pytest.raises(OverflowError):
        await pipeline.handle(0, recs)
    assert asked == [(OverflowError, RecordRef(topic, 0, 1, b"cb-bad", bad))]
    # Refused, the batch was taken not at all: it is read again from its first record.
    state = pipeline.partitions[0]
    assert state.next_offset is None and pipeline.counts.records == 0

    pipeline.on_processing_error = lambda exc, rec, logger: True
    await pipeline.handle(0, recs)
    assert state.next_offset == 3
    assert pipeline.counts.records == 3
    assert pipeline.counts.readings == 2 and pipeline.counts.deadletters == 1

    got = await read_topic(
        kafka_bootstrap, pipeline.topics.telemetry_deadletter, until=lambda g: len(g) >= 1
    )
    (dl,) = map(deadletter_decoder.decode, got)
    assert dl.reason == DeadLetterReason.PROCESSING_ERROR
    assert dl.device_id == "cb-bad" and dl.payload == bad
    assert dl.detail is not None and "OverflowError" in dl.detail


async def test_a_write_the_store_cannot_take_now_is_retried_until_it_can(
    pipeline: TelemetryPipeline,
) -> None:
    """Backpressure, in-process: the store's write fails twice as it does while PostgreSQL
    refuses connections (the real outage is in test_errors_e2e); the write waits it out, the
    batch loop is held meanwhile, and the samples are stored once."""
    held: list[bool] = []
    real = pipeline.store.insert_samples

    async def flaky(batch: Any) -> None:
        held.append(pipeline.backpressure.engaged)
        if len(held) < 3:
            raise ConnectionRefusedError("store down")
        await real(batch)

    pipeline.store.insert_samples = flaky  # type: ignore[method-assign]
    now = time.time()
    recs = _records(
        pipeline.topics.telemetry_raw, [(b"bp-1", envelope("bp-1", now, [(now, {"temp": 1.0})]))]
    )
    await pipeline.handle(0, recs)
    await pipeline.drain()
    # Not held before the first refusal, held while retrying, released once written.
    assert held == [False, True, True] and not pipeline.backpressure.engaged
    samples = await pipeline.store.query_samples("bp-1", metrics=None, start=0, end=4e9)
    assert len(samples) == 1 and pipeline.counts.samples == 1


async def test_a_tick_writes_its_closed_windows_in_device_chunks_two_at_a_time(
    pipeline: TelemetryPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick closing many windows (the idle close at the end of a backlog) does not write them
    as one statement: chunks of whole devices, two in flight at once (the small and the large
    window size share the two), each chunk produced to ``stats.windows`` once it is durable."""
    monkeypatch.setattr(pipeline_module, "WINDOW_WRITE_CHUNK", 6)
    events: list[tuple[str, frozenset[tuple[str, str, int, float]]]] = []
    writes: list[list[WindowStats]] = []
    in_flight = [0, 0]  # now, most at once
    real_upsert = pipeline.store.upsert_windows
    real_publish = pipeline.publisher.publish

    async def upsert(windows: Sequence[WindowStats]) -> None:
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        await asyncio.sleep(0.05)  # a write takes a while: let the others start meanwhile
        await real_upsert(windows)
        in_flight[0] -= 1
        writes.append(list(windows))
        events.append(("stored", frozenset(_window_keys(windows))))

    async def publish(topic: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        await real_publish(topic, items)
        if topic == pipeline.topics.stats_windows:
            produced = [window_decoder.decode(v) for _, v in items]
            events.append(("produced", frozenset(_window_keys(produced))))

    pipeline.store.upsert_windows = upsert  # type: ignore[method-assign]
    pipeline.publisher.publish = publish  # type: ignore[method-assign]
    t0 = (time.time() // 60) * 60 - 300.0
    devices = [f"chunk-{i:02d}" for i in range(12)]
    values = [
        (d.encode(), envelope(d, t0 + 1.1, [(t0 + 1.0, {"temp": float(i), "hum": 2.0 * i})]))
        for i, d in enumerate(devices)
    ]
    # A later record moves the partition's clock past those windows: they close.
    values.append((b"chunk-late", envelope("chunk-late", t0 + 200.1, [(t0 + 200.0, {"x": 1.0})])))
    await pipeline.handle(0, _records(pipeline.topics.telemetry_raw, values))
    await pipeline.tick(live=False)

    closed = {
        (d, m, size, t0 - t0 % size) for d in devices for m in ("temp", "hum") for size in (10, 60)
    }
    assert sorted(k for w in writes for k in _window_keys(w)) == sorted(closed)
    for size in (10, 60):
        # Each device's windows of a size in one write, and more than one write per size.
        chunks = [{w.device_id for w in ws if w.window_seconds == size} for ws in writes]
        chunks = [c for c in chunks if c]
        assert len(chunks) > 1 and sum(len(c) for c in chunks) == len(devices)
    assert in_flight[1] == 2
    stored: set[tuple[str, str, int, float]] = set()
    for what, keys in events:
        if what == "stored":
            stored |= keys
        else:
            assert keys <= stored  # produced only once durable
    got = await pipeline.store.query_windows(
        "chunk-03", metrics=None, window_seconds=60, start=0, end=4e9
    )
    assert [(w.metric, w.count, w.last) for w in got] == [("hum", 1, 6.0), ("temp", 1, 3.0)]


def _window_keys(windows: Sequence[WindowStats]) -> list[tuple[str, str, int, float]]:
    return [(w.device_id, w.metric, w.window_seconds, w.window_start) for w in windows]
