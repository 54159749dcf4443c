"""Socket.IO with a real client: refused without a valid token, rooms isolate, pushes arrive."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
import socketio
from aiokafka import AIOKafkaProducer

from iot_common.events import DeviceEvent, WindowStats, json_encoder


class Client:
    """A python-socketio client that records every event it receives."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for name in ("window", "alert", "device", "fleet"):
            self.sio.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[[dict[str, Any]], None]:
        def record(data: dict[str, Any]) -> None:
            self.events[name].append(data)

        return record

    async def connect(self, url: str, token: str | None) -> None:
        await self.sio.connect(
            url,
            socketio_path="/ws/monitoring",
            auth={"token": token} if token else None,
            transports=["websocket"],
            wait_timeout=10,
        )

    async def join(self, **what: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.sio.call("join", what, timeout=10)
        return result


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[], Client]]:
    made: list[Client] = []

    def make() -> Client:
        c = Client()
        made.append(c)
        return c

    yield make
    for c in made:
        if c.sio.connected:
            await c.sio.disconnect()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await p.start()
    yield p
    await p.stop()


def win(device: str, start: float, mean: float, final: bool = False) -> WindowStats:
    return WindowStats(
        device_id=device,
        metric="temp",
        window_seconds=10,
        window_start=start,
        count=5,
        min=mean - 1,
        max=mean + 1,
        mean=mean,
        stddev=0.5,
        p50=mean,
        p95=mean + 0.9,
        last=mean,
        last_ts=start + 9,
        final=final,
        updated_at=time.time(),
    )


async def send(producer: AIOKafkaProducer, topic: str, records: list[Any]) -> None:
    for r in records:
        await producer.send(topic, json_encoder.encode(r), key=r.device_id.encode())
    await producer.flush()


async def test_connect_needs_a_valid_token(
    app_factory: Any, make_user: Any, clients: Any, rsa_key: Any
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    app = await app_factory(serve=True)
    for token in (
        None,
        "garbage",
        make_user("operator", ttl=-60).token,  # expired
        make_user(
            "operator", key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ).token,
    ):
        c = clients()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await c.connect(app.url, token)
        assert not c.sio.connected
    ok = clients()
    await ok.connect(app.url, make_user("viewer").token)
    assert ok.sio.connected


async def test_rooms_isolate_owners_and_windows_arrive(
    app_factory: Any,
    make_user: Any,
    registry: Any,
    clients: Any,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    poll: Any,
) -> None:
    alice, bob = make_user("operator"), make_user("viewer")
    dev_a, dev_b = await registry.add(alice), await registry.add(bob)
    app = await app_factory(serve=True)
    ca, cb = clients(), clients()
    await ca.connect(app.url, alice.token)
    await cb.connect(app.url, bob.token)
    assert (await ca.join(device_id=dev_a))["ok"] is True
    refused = await ca.join(device_id=dev_b)
    assert refused["ok"] is False and "not found" in refused["error"]
    assert (await ca.join(device_id="not-a-uuid"))["ok"] is False
    assert (await ca.join(room="someone-elses"))["ok"] is False
    assert (await cb.join(device_id=dev_b))["ok"] is True

    t0 = 1_800_000_000.0
    await send(
        producer,
        f"{topic_prefix}stats.windows",
        [win(dev_a, t0, 21.0), win(dev_b, t0, 99.0), win(dev_a, t0 + 10, 22.0, final=True)],
    )
    await poll(lambda: len(ca.events["window"]) >= 2 and len(cb.events["window"]) >= 1)
    await asyncio.sleep(0.3)
    assert [(w["device_id"], w["mean"]) for w in ca.events["window"]] == [
        (dev_a, 21.0),
        (dev_a, 22.0),
    ]
    assert [(w["device_id"], w["mean"]) for w in cb.events["window"]] == [(dev_b, 99.0)]
    assert msgspec.convert(ca.events["window"][1], WindowStats).final is True


async def test_alert_rooms_filter_by_severity_and_owner(
    new_alert: Any,
    app_factory: Any,
    make_user: Any,
    registry: Any,
    clients: Any,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    poll: Any,
) -> None:
    alice, bob, admin = make_user("operator"), make_user("operator"), make_user("admin")
    dev_a, dev_b = await registry.add(alice), await registry.add(bob)
    app = await app_factory(serve=True)
    ca, cadmin = clients(), clients()
    await ca.connect(app.url, alice.token)
    await cadmin.connect(app.url, admin.token)
    assert (await ca.join(alerts_min_severity="warning"))["ok"] is True
    assert (await ca.join(alerts_min_severity="loud"))["ok"] is False
    assert (await cadmin.join(alerts_min_severity="info"))["ok"] is True

    a_info, a_crit = new_alert(dev_a, alice.id, "info"), new_alert(dev_a, None, "critical")
    b_crit = new_alert(dev_b, bob.id, "critical")
    await send(producer, f"{topic_prefix}alerts", [a_info, a_crit, b_crit])
    await poll(lambda: len(cadmin.events["alert"]) >= 3)
    await poll(lambda: len(ca.events["alert"]) >= 1)
    await asyncio.sleep(0.3)
    # a_crit carried no owner: the API looked it up in device-management.
    assert [a["alert_id"] for a in ca.events["alert"]] == [a_crit.alert_id]
    assert ca.events["alert"][0]["owner_id"] == alice.id
    assert sorted(a["alert_id"] for a in cadmin.events["alert"]) == sorted(
        [a_info.alert_id, a_crit.alert_id, b_crit.alert_id]
    )


async def test_fleet_figures_and_device_events(
    app_factory: Any,
    make_user: Any,
    registry: Any,
    clients: Any,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    poll: Any,
) -> None:
    alice, bob = make_user("operator"), make_user("operator")
    dev_a, dev_b = await registry.add(alice), await registry.add(bob)
    app = await app_factory(serve=True)
    ca = clients()
    await ca.connect(app.url, alice.token)
    assert (await ca.join(room="fleet"))["ok"] is True
    await poll(lambda: ca.events["fleet"])
    assert {"devices_reporting", "readings_per_second", "alerts_by_severity"} <= set(
        ca.events["fleet"][0]
    )
    events = [
        DeviceEvent(
            event_id=str(uuid.uuid4()),
            event_type="device.updated",
            device_id=d,
            timestamp=time.time(),
            owner_id=o.id,
            device={"id": d, "name": "renamed"},
        )
        for d, o in ((dev_a, alice), (dev_b, bob))
    ]
    await send(producer, f"{topic_prefix}device.events", events)
    await poll(lambda: ca.events["device"])
    await asyncio.sleep(0.3)
    assert [e["device_id"] for e in ca.events["device"]] == [dev_a]

    # A deleted device's room is closed: its watchers get nothing more from it.
    assert (await ca.join(device_id=dev_a))["ok"] is True
    deleted = DeviceEvent(
        event_id=str(uuid.uuid4()),
        event_type="device.deleted",
        device_id=dev_a,
        timestamp=time.time(),
        owner_id=alice.id,
    )
    await send(producer, f"{topic_prefix}device.events", [deleted])
    await poll(lambda: len(ca.events["device"]) >= 2)
    await send(producer, f"{topic_prefix}stats.windows", [win(dev_a, 1_800_000_000.0, 1.0)])
    await asyncio.sleep(1.0)
    assert ca.events["window"] == []


async def test_each_instance_pushes_every_record_once_to_its_own_clients(
    app_factory: Any,
    make_user: Any,
    registry: Any,
    clients: Any,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    poll: Any,
) -> None:
    alice = make_user("operator")
    dev = await registry.add(alice)
    one, two = await app_factory(serve=True), await app_factory(serve=True)
    c1, c2, c2b = clients(), clients(), clients()
    await c1.connect(one.url, alice.token)
    await c2.connect(two.url, alice.token)
    await c2b.connect(two.url, alice.token)
    for c in (c1, c2, c2b):
        assert (await c.join(device_id=dev))["ok"] is True
    n = 50
    await send(
        producer,
        f"{topic_prefix}stats.windows",
        [win(dev, 1_800_000_000.0 + 10 * i, float(i)) for i in range(n)],
    )
    await poll(lambda: all(len(c.events["window"]) >= n for c in (c1, c2, c2b)))
    await asyncio.sleep(0.5)
    for c in (c1, c2, c2b):
        assert [w["mean"] for w in c.events["window"]] == [float(i) for i in range(n)]


async def test_revoked_token_is_disconnected_and_refused(
    app_factory: Any,
    make_user: Any,
    clients: Any,
    redis_url: str,
    redis_namespace: str,
    poll: Any,
) -> None:
    import jwt
    from redis.asyncio import Redis

    from iot_common.auth import publish_revocation

    alice = make_user("operator")
    app = await app_factory(serve=True, session_sweep_interval=0.2)
    c = clients()
    await c.connect(app.url, alice.token)
    assert c.sio.connected
    claims = jwt.decode(alice.token, options={"verify_signature": False})
    redis = Redis.from_url(redis_url)
    try:
        await publish_revocation(
            redis, namespace=redis_namespace, jti=claims["jti"], exp=claims["exp"]
        )
    finally:
        await redis.aclose()
    await poll(lambda: not c.sio.connected, timeout=15)
    again = clients()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await again.connect(app.url, alice.token)
    r = await app.client.get("/monitoring/alerts", headers=alice.headers)
    assert r.status_code == 401
