"""The pipeline's error callback, in-process against the real store and broker: it decides
about a record that breaks decoding, and a batch it refuses is taken not at all."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from agents_testkit import envelope, read_topic
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from iot_common.stream_errors import RecordRef
from iot_common.telemetry import DeadLetterReason, deadletter_decoder
from iot_common.topics import Topics
from monitoring_store import open_store
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
