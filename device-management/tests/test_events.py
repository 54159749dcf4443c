"""Device events reach the RabbitMQ exchange, in order, exactly once, even across an outage."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import urlsplit

import aio_pika

from iotctl.tcp_proxy import TcpProxy


async def test_lifecycle_events_published(
    service: Any, users: dict[str, Any], event_sink: Any, device_body: Any
) -> None:
    c, alice = service.client, users["alice"]
    dev = (await c.post("/devices/", json=device_body("ev-dev"), headers=alice.headers)).json()
    await c.put(f"/devices/{dev['id']}", json={"name": "ev-dev-2"}, headers=alice.headers)
    await c.post(f"/devices/{dev['id']}/credentials", headers=alice.headers)
    await c.post(
        f"/devices/{dev['id']}/events",
        json={"event_type": "door_opened", "payload": {"door": 1}},
        headers=alice.headers,
    )
    await c.delete(f"/devices/{dev['id']}", headers=alice.headers)

    events = await event_sink.wait_for(lambda evs: len(evs) >= 5)
    assert [e.event_type for e in events] == [
        "device.created",
        "device.updated",
        "device.credentials_rotated",
        "device.event.door_opened",
        "device.deleted",
    ]
    created, updated, rotated, custom, deleted = events
    assert created.device is not None and created.device["name"] == "ev-dev"
    assert created.owner_id == alice.id and created.device_id == dev["id"]
    assert set(created.device) == {
        "id",
        "name",
        "type",
        "config",
        "active",
        "owner_id",
        "config_version",
        "created_at",
        "updated_at",
    }
    assert updated.device is not None and updated.device["name"] == "ev-dev-2"
    assert rotated.device is not None and "token_hash" not in rotated.device
    assert custom.payload == {"door": 1} and custom.device is None
    assert deleted.device is not None and deleted.device["name"] == "ev-dev-2"

    messages = [m for m, _ in event_sink.received]
    assert [m.routing_key for m in messages] == [e.event_type for e in events]
    assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in messages)
    assert [m.message_id for m in messages] == [e.event_id for e in events]
    # The history ids are the event ids.
    history = await c.get("/health")
    assert history.json()["outbox_pending"] == 0


async def test_outage_loses_nothing_and_keeps_order(
    start_service: Any,
    users: dict[str, Any],
    event_sink: Any,
    rabbitmq_url: str,
    device_body: Any,
) -> None:
    target = urlsplit(rabbitmq_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    await proxy.start()
    try:
        service = await start_service(rabbitmq_url=proxy.via(rabbitmq_url))
        c, alice = service.client, users["alice"]
        first = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
        await event_sink.wait_for(lambda evs: len(evs) == 1)

        await proxy.stop()  # RabbitMQ unreachable from the service from here on
        devices = [first["id"]]
        for i in range(3):
            r = await c.post("/devices/", json=device_body(f"outage-{i}"), headers=alice.headers)
            assert r.status_code == 201  # the API keeps working
            devices.append(r.json()["id"])
        for round_ in range(4):
            for dev_id in devices:
                r = await c.put(
                    f"/devices/{dev_id}",
                    json={"config": {"metrics": [{"name": f"m{round_}"}]}},
                    headers=alice.headers,
                )
                assert r.status_code == 200
        await c.post(f"/devices/{devices[1]}/credentials", headers=alice.headers)
        await c.delete(f"/devices/{devices[2]}", headers=alice.headers)
        expected_total = 1 + 3 + 4 * 4 + 2

        health = (await c.get("/health")).json()
        assert health["status"] == "ok"
        assert health["rabbitmq"] == "down"
        assert health["outbox_pending"] == expected_total - 1
        await asyncio.sleep(1.0)  # the relay keeps retrying meanwhile; nothing may get out
        assert len(event_sink.events()) == 1

        await proxy.start()  # RabbitMQ is back
        events = await event_sink.wait_for(lambda evs: len(evs) >= expected_total, timeout=20)
        await asyncio.sleep(0.5)  # would catch a late duplicate
        events = event_sink.events()
        ids = [e.event_id for e in events]
        assert len(ids) == expected_total and len(set(ids)) == expected_total

        for dev_id in devices:
            mine = [e for e in events if e.device_id == dev_id]
            versions = [e.device["config_version"] for e in mine if e.device is not None]
            assert versions == sorted(versions), (dev_id, versions)
            assert mine[0].event_type == "device.created"
        assert [e.event_type for e in event_sink.events(devices[1])][-1] == (
            "device.credentials_rotated"
        )
        assert [e.event_type for e in event_sink.events(devices[2])][-1] == "device.deleted"
        # Publication order is commit order (timestamps never go backwards).
        stamps = [e.timestamp for e in events]
        assert stamps == sorted(stamps)
        deadline = time.monotonic() + 5
        while (await c.get("/health")).json()["outbox_pending"] != 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        with contextlib.suppress(Exception):
            await proxy.stop()


async def test_two_replicas_publish_each_event_once_in_order(
    start_service: Any, users: dict[str, Any], event_sink: Any, device_body: Any
) -> None:
    """Two app instances share the outbox: their relays take turns, nothing doubles."""
    one = await start_service()
    two = await start_service()
    alice = users["alice"]
    dev = (await one.client.post("/devices/", json=device_body(), headers=alice.headers)).json()
    for i in range(10):
        replica = one if i % 2 else two
        r = await replica.client.put(
            f"/devices/{dev['id']}",
            json={"config": {"metrics": [{"name": f"m{i}"}]}},
            headers=alice.headers,
        )
        assert r.status_code == 200
    events = await event_sink.wait_for(lambda evs: len(evs) >= 11)
    await asyncio.sleep(0.5)
    events = event_sink.events()
    assert len(events) == 11 and len({e.event_id for e in events}) == 11
    assert [e.device["config_version"] for e in events if e.device] == list(range(1, 12))


async def test_service_starts_while_rabbitmq_is_unreachable(
    start_service: Any,
    users: dict[str, Any],
    event_sink: Any,
    rabbitmq_url: str,
    device_body: Any,
) -> None:
    target = urlsplit(rabbitmq_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    await proxy.start()
    await proxy.stop()  # the port is known but nothing listens: RabbitMQ is "down"
    try:
        service = await start_service(rabbitmq_url=proxy.via(rabbitmq_url))
        c, alice = service.client, users["alice"]
        r = await c.post("/devices/", json=device_body(), headers=alice.headers)
        assert r.status_code == 201
        health = (await c.get("/health")).json()
        assert health["status"] == "ok" and health["rabbitmq"] == "down"
        assert health["outbox_pending"] == 1
        await proxy.start()
        events = await event_sink.wait_for(lambda evs: len(evs) >= 1, timeout=20)
        assert [e.event_type for e in events] == ["device.created"]
        assert events[0].device_id == r.json()["id"]
    finally:
        with contextlib.suppress(Exception):
            await proxy.stop()


async def test_concurrent_changes_publish_in_commit_order(
    service: Any, users: dict[str, Any], event_sink: Any, device_body: Any
) -> None:
    """Concurrent updates of one device serialise; its events leave in version order."""
    c, alice = service.client, users["alice"]
    dev = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()

    async def change(i: int) -> int:
        r = await c.put(
            f"/devices/{dev['id']}",
            json={"config": {"metrics": [{"name": f"m{i}"}]}},
            headers=alice.headers,
        )
        assert r.status_code == 200
        return int(r.json()["config_version"])

    versions = await asyncio.gather(*(change(i) for i in range(20)))
    assert sorted(versions) == list(range(2, 22))
    events = await event_sink.wait_for(lambda evs: len(evs) >= 21)
    assert [e.device["config_version"] for e in events if e.device] == list(range(1, 22))
