"""The agents' error paths as a user notices them: nothing lost, nothing counted twice, the
worker keeps running.

* a record that breaks decoding (valid JSON, but a ``seq`` beyond 64-bit integers), a
  record the store would refuse (a NUL character in a metric name: PostgreSQL text cannot
  hold one) and a device event that cannot be applied (a ``config_version`` that is no
  number) are dead-lettered with their reason; every other window is exact;
* every dead letter (the agents' and the bridge's) is kept in the store for the device's
  owner, its payload cut to the first KiB;
* a store outage (PostgreSQL behind a proxy the test cuts): the worker holds its input,
  commits nothing it has not written, and once the store is back every window is exact.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import numpy as np
from agents_testkit import (
    AgentEnv,
    Readings,
    envelope,
    produce,
    read_topic,
    synth,
    wait_for,
    wait_windows,
)
from aiokafka import AIOKafkaConsumer, TopicPartition

from iot_common.events import DeviceEvent
from iot_common.telemetry import (
    DeadLetter,
    DeadLetterReason,
    deadletter_decoder,
    deadletter_encoder,
)
from iotctl.tcp_proxy import ThreadedTcpProxy
from monitoring_store import DEADLETTER_PAYLOAD_BYTES, DeadLetterRecord


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_records_that_break_decoding_or_the_store_are_dead_lettered(
    agent_env_factory: Any, producer: Any, store_factory: Any
) -> None:
    ae: AgentEnv = agent_env_factory()
    w = ae.start_worker()
    ae.wait_ready(w)
    store = await store_factory(ae.store_url)
    rng = np.random.default_rng(3)
    devices = [f"d-{i}" for i in range(6)]
    before = synth(devices, 400, time.time() - 200, rng)
    after = synth(devices, 400, before[-1][1], rng)
    topic = ae.topics.telemetry_raw
    ingest = before[-1][1]
    # Valid JSON, and the bridge passes it on, but not an int64: the columnar decode raises.
    overflow = envelope("bad-seq", ingest, [(ingest, {"temp": 1.0})], [2**63])
    # Decodes, but PostgreSQL would refuse the metric name in every write of its batch.
    nul = envelope("bad-nul", ingest, [(ingest, {"te\x00mp": 1.0, "hum": 2.0})])
    assert b"\\u0000" in nul

    await produce(producer, topic, before)
    for dev, value in (("bad-seq", overflow), ("bad-nul", nul)):
        await producer.send(topic, value, key=dev.encode())
    await produce(producer, topic, after)
    event = msgspec.json.encode(
        DeviceEvent(
            event_id="e-1",
            event_type="device.updated",
            device_id="bad-event",
            timestamp=time.time(),
            device={"id": "bad-event", "config": {}, "config_version": "seven"},
        )
    )
    await producer.send_and_wait(ae.topics.device_events, event, key=b"bad-event")

    # Every other window is exact: the batches holding the bad records were processed.
    await wait_windows(store, before + after, timeout=60)

    def all_three(got: list[bytes]) -> bool:
        devs = {deadletter_decoder.decode(g).device_id for g in got}
        return {"bad-seq", "bad-nul", "bad-event"} <= devs

    got = await read_topic(ae.bootstrap, ae.topics.telemetry_deadletter, until=all_three)
    dead = {d.device_id: d for d in map(deadletter_decoder.decode, got)}
    seq = dead["bad-seq"]
    assert seq.reason == DeadLetterReason.PROCESSING_ERROR
    assert seq.source == "stream-agents"
    assert seq.detail is not None and seq.detail.startswith("OverflowError")
    assert seq.payload == overflow  # the record as it was, to replay once fixed
    assert dead["bad-nul"].reason == DeadLetterReason.INVALID_SCHEMA
    assert dead["bad-nul"].payload == nul
    ev = dead["bad-event"]
    assert ev.reason == DeadLetterReason.PROCESSING_ERROR and ev.payload == event
    assert ev.detail is not None and ev.detail.startswith("ValueError")
    for dev in ("bad-seq", "bad-nul"):
        assert (
            await store.query_windows(dev, metrics=None, window_seconds=10, start=0, end=4e9) == []
        )

    # The owners can see why: the dead letters are kept in the store per device, the bridge's
    # too (one produced here as the bridge would, with a 2 KiB body and a NUL in its detail).
    bridge = DeadLetter(
        reason=DeadLetterReason.NON_FINITE,
        source="mqtt",
        payload=b'{"ts": 1, "metrics": {"temp": "' + b"9" * 2048 + b'"}}',
        ts=time.time(),
        device_id="bridge-dev",
        detail="metric 'te\x00mp' is not finite",
    )
    await producer.send_and_wait(
        ae.topics.telemetry_deadletter, deadletter_encoder.encode(bridge), key=b"bridge-dev"
    )
    owners_see = ["bad-seq", "bad-nul", "bad-event", "bridge-dev"]

    async def kept() -> list[DeadLetterRecord] | None:
        got = await store.query_deadletters(device_ids=owners_see)
        return got if {r.device_id for r in got} == set(owners_see) else None

    by_device = {r.device_id: r for r in await wait_for(kept)}
    assert by_device["bad-seq"].reason == DeadLetterReason.PROCESSING_ERROR
    assert by_device["bad-seq"].payload == overflow.decode()
    assert by_device["bad-nul"].reason == DeadLetterReason.INVALID_SCHEMA
    kept_bridge = by_device["bridge-dev"]
    assert kept_bridge.source == "mqtt" and kept_bridge.payload_truncated
    assert len(kept_bridge.payload) == DEADLETTER_PAYLOAD_BYTES
    assert kept_bridge.detail == "metric 'te\ufffdmp' is not finite"
    counts = await store.deadletter_counts(device_ids=owners_see, start=0, end=4e9)
    assert counts == {"invalid_schema": 1, "non_finite": 1, "processing_error": 2}

    # Counted once each, and the same process is still running.
    text = await asyncio.to_thread(w.metrics)
    assert _metric(text, 'agents_deadletters_total{reason="processing_error"}') == 2.0
    assert _metric(text, 'agents_device_events_total{outcome="failed"}') == 1.0
    assert _metric(text, 'agents_deadletters_total{reason="invalid_schema"}') == 1.0
    assert w.proc.poll() is None
    health = w.health()
    assert health is not None and health["status"] == "ok"
    assert health["counts"]["records"] == len(before) + len(after) + 2


async def test_a_record_the_callback_refuses_stops_the_loop_and_nothing_is_skipped(
    agent_env_factory: Any, producer: Any, store_factory: Any
) -> None:
    """A callback returning False makes the stage raise: Faust restarts the batch loop, which
    reads the interrupted fetch again from its first record not handled (without that, the
    records fetched with the refused one would be skipped and the windows short)."""
    ae: AgentEnv = agent_env_factory()
    store = await store_factory(ae.store_url)
    rng = np.random.default_rng(5)
    devices = [f"s-{i}" for i in range(6)]
    before = synth(devices, 400, time.time() - 200, rng)
    after = synth(devices, 400, before[-1][1], rng)
    topic = ae.topics.telemetry_raw
    ingest = before[-1][1]
    overflow = envelope("bad-seq", ingest, [(ingest, {"temp": 1.0})], [2**63])
    await produce(producer, topic, before)
    await producer.send_and_wait(topic, overflow, key=b"bad-seq")
    await produce(producer, topic, after)
    # Started after everything is in the topic, so that the fetch holding the refused record
    # holds records of every partition before and after it.
    w = ae.start_worker(argv=[str(Path(__file__).with_name("strict_worker.py"))])
    ae.wait_ready(w)

    # Nothing skipped and nothing counted twice: every window is exact.
    await wait_windows(store, before + after, timeout=60)
    got = await read_topic(
        ae.bootstrap,
        ae.topics.telemetry_deadletter,
        until=lambda g: any(deadletter_decoder.decode(x).device_id == "bad-seq" for x in g),
    )
    dead_seq = [d for d in map(deadletter_decoder.decode, got) if d.device_id == "bad-seq"]
    assert len(dead_seq) == 1, "the refused record was skipped instead of met again"
    dead = dead_seq[0]
    assert dead.reason == DeadLetterReason.PROCESSING_ERROR and dead.payload == overflow

    text = await asyncio.to_thread(w.metrics)
    assert _metric(text, 'agents_deadletters_total{reason="processing_error"}') == 1.0
    assert w.proc.poll() is None
    health = w.health()
    assert health is not None and health["status"] == "ok"
    assert health["counts"]["records"] == len(before) + len(after) + 1
    log = Path(w.log.name).read_text()
    assert "refusing" in log and f"resuming {topic}[" in log


def _in_time(devices: list[str], n: int, start: float) -> Readings:
    """Readings in ingest order, none late (each 0-1 s old when it reaches the platform)."""
    out: Readings = []
    for i in range(n):
        ingest = round(start + i * 0.05, 3)
        dev = devices[i % len(devices)]
        out.append((dev, ingest, round(ingest - (i % 7) / 7, 3), {"temp": float(i % 13)}, i))
    return out


async def test_a_store_outage_holds_the_stage_and_loses_nothing(
    agent_env_factory: Any, producer: Any, store_factory: Any
) -> None:
    ae: AgentEnv = agent_env_factory()
    target = urlsplit(ae.store_url)
    proxy = ThreadedTcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    proxy.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=ae.bootstrap, group_id=ae.app_id)
    await consumer.start()
    try:
        w = ae.start_worker(MONITORING_STORE_URL=proxy.via(ae.store_url))
        ae.wait_ready(w)
        store = await store_factory(ae.store_url)  # the test's own view, not through the proxy
        devices = [f"o-{i}" for i in range(8)]
        first = _in_time(devices, 400, time.time() - 200)
        second = _in_time(devices, 400, first[-1][1] + 0.05)
        topic = ae.topics.telemetry_raw
        await produce(producer, topic, first)
        await wait_windows(store, first, timeout=60)

        proxy.stop()  # PostgreSQL goes away: new connections refused, open ones cut
        sent = await produce(producer, topic, second)
        first_of_second: dict[int, int] = {}
        for md in sent:
            first_of_second.setdefault(md.partition, md.offset)

        def held() -> bool:
            h = w.health()
            return bool(h and h.get("backpressure") and h["backpressure"]["sink"] == "store")

        assert await wait_for(lambda: asyncio.to_thread(held), timeout=30), w.health()
        # Several ticks with the store down: nothing of the second part may be committed
        # (none of it is written), and the worker stays up.
        for _ in range(6):
            await asyncio.sleep(1.0)
            assert w.proc.poll() is None
            for p, first_offset in first_of_second.items():
                committed = await consumer.committed(TopicPartition(topic, p))
                assert committed is None or committed <= first_offset, (p, committed)

        proxy.start()  # back: the held writes go through, the loop resumes
        await wait_windows(store, first + second, timeout=60)
        assert w.proc.poll() is None

        async def caught_up() -> bool:
            h = await asyncio.to_thread(w.health)
            return bool(h and h["backpressure"] is None)

        assert await wait_for(caught_up, timeout=30)
        text = await asyncio.to_thread(w.metrics)
        assert _metric(text, 'agents_sink_backpressure_total{sink="store"}') >= 1
        samples = await store.query_samples(devices[0], metrics=None, start=0, end=4e9)
        assert len(samples) == sum(1 for r in first + second if r[0] == devices[0])
    finally:
        await consumer.stop()
        proxy.close()
