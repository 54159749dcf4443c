"""MQTT → Kafka end to end: real Mosquitto, Redis and the Kafka-compatible broker."""

from __future__ import annotations

import time
from typing import Any

from iot_common import redis_keys
from iot_common.telemetry import DeadLetterReason as R


def reading(value: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"ts": time.time(), "metrics": {"temp": value}, **extra}


async def test_single_and_batched_readings_arrive_keyed_by_device(
    app_client, publisher, device_factory, bus, settings, redis, redis_namespace
):
    dev = await device_factory()
    topic = f"{settings.mqtt_topic_prefix}devices/{dev.id}/telemetry"
    publisher.publish(topic, reading(21.5, seq=1))
    publisher.publish(topic, [reading(float(i), seq=100 + i) for i in range(50)])
    publisher.flush()

    await bus.until(lambda: len(bus.readings(dev.id)) == 51, what="51 readings")
    envs = [e for e in bus.raw if e.device_id == dev.id]
    assert sorted(len(e.readings) for e in envs) == [1, 50]  # one envelope per message
    assert all(e.source == "mqtt" for e in envs)
    assert set(bus.raw_keys) == {dev.id.encode()}
    seqs = sorted(r.seq for r in bus.readings(dev.id))
    assert seqs == [1, *range(100, 150)]
    assert bus.dead == []

    async def seen() -> bool:
        return await redis.hget(redis_keys.last_seen(redis_namespace), dev.id) is not None

    deadline = time.monotonic() + 5
    while not await seen():
        assert time.monotonic() < deadline, "last seen never written"
        await _sleep(0.1)
    last = float(await redis.hget(redis_keys.last_seen(redis_namespace), dev.id))
    assert abs(last - time.time()) < 30


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


async def test_every_bad_input_is_dead_lettered_with_its_reason(
    app_client, publisher, device_factory, bus, settings
):
    good = await device_factory()
    inactive = await device_factory(active=False)
    unknown_id = "6f1c5a52-7d7e-4d7c-9c43-6a0c1f0e2b11"
    other = await device_factory()
    p = settings.mqtt_topic_prefix

    def topic(did: str) -> str:
        return f"{p}devices/{did}/telemetry"

    now = time.time()
    bad: list[tuple[str, Any, str]] = [
        (good.id, b"this is not json", R.NOT_JSON),
        (good.id, b'{"ts": 1, "metrics": {"temp": 1' + b" " * 70_000 + b"}}", R.TOO_LARGE),
        (good.id, {"ts": now}, R.MISSING_METRICS),
        (good.id, {"ts": now, "metrics": {}}, R.MISSING_METRICS),
        (good.id, {"ts": now, "metrics": {"temp": "hot"}}, R.NON_NUMERIC_METRIC),
        (good.id, {"ts": now, "metrics": {"temp": True}}, R.NON_NUMERIC_METRIC),
        (good.id, b'{"ts": %f, "metrics": {"temp": NaN}}' % now, R.NON_FINITE),
        (good.id, b'{"ts": %f, "metrics": {"temp": Infinity}}' % now, R.NON_FINITE),
        (good.id, b'{"ts": %f, "metrics": {"temp": 1e999}}' % now, R.NON_FINITE),
        (
            good.id,
            {"ts": now, "metrics": {f"m{i}": i for i in range(settings.max_metrics + 1)}},
            R.TOO_MANY_METRICS,
        ),
        (good.id, {"ts": now + 3600, "metrics": {"temp": 1}}, R.FUTURE_TIMESTAMP),
        (good.id, {"ts": now - 10 * 86400, "metrics": {"temp": 1}}, R.TOO_OLD),
        (good.id, {"ts": "2001-01-01T00:00:00Z", "metrics": {"temp": 1}}, R.TOO_OLD),
        (good.id, {"ts": "yesterday", "metrics": {"temp": 1}}, R.INVALID_SCHEMA),
        (good.id, {"ts": now, "metrics": {"temp": 1}, "device_id": other.id}, R.DEVICE_MISMATCH),
        (unknown_id, reading(), R.UNKNOWN_DEVICE),
        (inactive.id, reading(), R.INACTIVE_DEVICE),
    ]
    # Each bad message is sandwiched between good readings of the same device.
    seq = 0
    for did, payload, _ in bad:
        publisher.publish(topic(good.id), reading(seq=seq))
        seq += 1
        publisher.publish(topic(did), payload)
    publisher.publish(topic(good.id), reading(seq=seq))
    seq += 1
    # A batch with one bad reading: the good ones in it still arrive.
    publisher.publish(
        topic(good.id),
        [reading(seq=seq), {"ts": now, "metrics": {"temp": "x"}}, reading(seq=seq + 1)],
    )
    seq += 2
    publisher.flush()

    await bus.until(
        lambda: len(bus.dead) >= len(bad) + 1 and len(bus.readings(good.id)) >= seq,
        timeout=30,
        what="dead letters and good readings",
    )
    expected = sorted([reason for _, _, reason in bad] + [R.NON_NUMERIC_METRIC])
    assert sorted(bus.reasons()) == expected
    assert sorted(r.seq for r in bus.readings(good.id)) == list(range(seq))
    for dl in bus.dead:
        assert dl.source == "mqtt"
        assert dl.payload  # the original bytes
    by_reason = {d.reason: d for d in bus.dead}
    assert by_reason[R.NOT_JSON].payload == b"this is not json"
    assert by_reason[R.UNKNOWN_DEVICE].device_id == unknown_id
    assert by_reason[R.INACTIVE_DEVICE].device_id == inactive.id
    batch_reject = [
        d for d in bus.dead if d.reason == R.NON_NUMERIC_METRIC and d.detail.startswith("reading")
    ]
    assert len(batch_reject) == 1
    assert b'"x"' in batch_reject[0].payload  # just the bad reading, as the device sent it

    metrics = (await app_client[0].get("/metrics")).text
    assert 'ingest_deadlettered_total{reason="too_large",source="mqtt"}' in metrics


async def test_a_topic_outside_the_contract_is_dead_lettered(app_client, publisher, bus, settings):
    # Matches the subscription (devices/+/telemetry) only through an empty device segment.
    publisher.publish(f"{settings.mqtt_topic_prefix}devices//telemetry", reading())
    publisher.flush()
    await bus.until(lambda: len(bus.dead) == 1, what="dead letter")
    assert bus.dead[0].reason == R.INVALID_SCHEMA
    assert "unexpected topic" in bus.dead[0].detail


async def test_cache_miss_falls_back_to_device_management(
    app_client, publisher, device_factory, bus, settings, fake_dm
):
    dev = await device_factory(cached=False)
    fake_dm.devices[dev.id] = {
        "id": dev.id,
        "active": True,
        "owner_id": "o",
        "token_hash": "",
        "config_version": 3,
        "type": "sensor",
    }
    publisher.publish(f"{settings.mqtt_topic_prefix}devices/{dev.id}/telemetry", reading(seq=7))
    publisher.flush()
    await bus.until(lambda: len(bus.readings(dev.id)) == 1, what="reading via fallback")
    assert f"/internal/devices/{dev.id}" in fake_dm.requests


async def test_two_bridges_in_one_group_split_the_load(
    make_settings, names, publisher, device_factory, bus, settings
):
    import httpx
    from asgi_lifespan import LifespanManager

    from ingest_bridge.main import create_app

    dev = await device_factory()
    apps = [
        create_app(make_settings(mqtt_client_id=f"{names['mqtt_client_id']}-{k}")) for k in range(2)
    ]
    async with LifespanManager(apps[0]) as m0, LifespanManager(apps[1]) as m1:
        for m in (m0, m1):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=m.app), base_url="http://b"
            ) as client:
                deadline = time.monotonic() + 20
                while (await client.get("/ready")).status_code != 200:
                    assert time.monotonic() < deadline
                    await _sleep(0.1)
        topic = f"{settings.mqtt_topic_prefix}devices/{dev.id}/telemetry"
        for i in range(100):
            publisher.publish(topic, reading(seq=i))
        publisher.flush()
        await bus.until(lambda: len(bus.readings(dev.id)) >= 100, what="100 readings")
        assert {r.seq for r in bus.readings(dev.id)} == set(range(100))
        shares = [app.state.bridge.mqtt.received for app in apps]
        assert sum(shares) == 100
        assert all(share > 0 for share in shares), shares


async def test_a_packet_over_the_brokers_limit_never_reaches_the_bridge(
    app_client, publisher, mqtt_connect, test_publisher_account, device_factory, bus, settings
):
    """The broker's max_packet_size (the figure the bridge announces in CONNECT) refuses a
    64 MiB message at the publisher; the bridge never sees it and keeps taking readings."""
    source = app_client[1].state.bridge.mqtt
    generation = source._generation
    dev = await device_factory()
    topic = f"{settings.mqtt_topic_prefix}devices/{dev.id}/telemetry"
    flood = mqtt_connect(test_publisher_account.username, test_publisher_account.password)
    flood.client.publish(topic, b"x" * (64 * 1024 * 1024), qos=1)
    deadline = time.monotonic() + 10
    while not flood.disconnected.is_set():  # the broker closes the offending connection
        assert time.monotonic() < deadline, "the broker took a 64 MiB packet"
        await _sleep(0.05)
    publisher.publish(topic, reading(seq=1))
    publisher.flush()
    await bus.until(lambda: len(bus.readings(dev.id)) == 1, what="the next reading")
    assert source.received == 1 and source._generation == generation
    assert bus.dead == []
