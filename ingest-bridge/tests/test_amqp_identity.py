"""AMQP telemetry with device identity, end to end: RabbitMQ (this session's private vhost,
device users with the platform's permissions), the bridge on its own service account, Kafka.

The device users here are created with :mod:`iot_common.rabbitmq`'s device definitions, the
same that device-management imports; its own tests cover rotation and deletion at the broker
(device-management/tests/test_rabbitmq_accounts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import ProbableAuthenticationError
from aiormq.exceptions import AMQPConnectionError, ChannelAccessRefused

from ingest_bridge.config import IngestBridgeSettings
from ingest_bridge.sources.amqp import AmqpBatchConsumer
from iot_common import rabbitmq
from iot_common.telemetry import DeadLetterReason as R
from iot_common.topics import DEVICE_EVENTS_EXCHANGE, TELEMETRY_EXCHANGE


def reading(value: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"ts": time.time(), "metrics": {"temp": value}, **extra}


@pytest.fixture
def settings(
    make_settings: Callable[..., IngestBridgeSettings], rabbitmq_vhost: Any, names: dict[str, str]
) -> IngestBridgeSettings:
    """The bridge on its service account in the session's vhost, with queues of its own."""
    return make_settings(
        rabbitmq_url=rabbitmq_vhost.bridge_url,
        telemetry_exchange=TELEMETRY_EXCHANGE,
        device_events_exchange=DEVICE_EVENTS_EXCHANGE,
        amqp_queue=f"ingest-bridge.telemetry.{names['tag']}",
        device_events_enabled=False,
        mqtt_enabled=False,
    )


@pytest.fixture
async def device_users(rabbitmq_vhost: Any) -> AsyncIterator[Callable[..., Any]]:
    """Give a device a RabbitMQ user (its token as password) with the device permissions."""
    made: list[str] = []
    api = rabbitmq_vhost.management()

    async def make(device_id: str, token: str) -> None:
        await api.import_definitions(
            rabbitmq.device_definitions(
                rabbitmq_vhost.name,
                TELEMETRY_EXCHANGE,
                [(device_id, rabbitmq.password_hash(token), True)],
            )
        )
        made.append(device_id)

    yield make
    await api.delete_users(made)
    await api.aclose()


@pytest.fixture
async def connect(rabbitmq_vhost: Any) -> AsyncIterator[Callable[..., Any]]:
    opened: list[AbstractConnection] = []

    async def open_(username: str | None, password: str | None) -> AbstractConnection:
        conn = await aio_pika.connect(rabbitmq_vhost.url(username, password), timeout=5)
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        with contextlib.suppress(Exception):
            await conn.close()


async def publish(conn: AbstractConnection, key: str, body: bytes, **kw: Any) -> None:
    channel = await conn.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(TELEMETRY_EXCHANGE, ensure=False)
    message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **kw)
    await exchange.publish(message, routing_key=key, timeout=5)
    await channel.close()


async def _queue_empty(rabbitmq_vhost: Any, connect: Any, queue: str) -> None:
    admin = await connect(None, None)
    channel = await admin.channel()
    deadline = time.monotonic() + 10
    while True:
        q = await channel.declare_queue(queue, durable=True, passive=True)
        if q.declaration_result.message_count == 0:
            return
        assert time.monotonic() < deadline, "messages left on the bridge's queue"
        await asyncio.sleep(0.05)


async def test_no_credential_and_a_wrong_one_are_refused(
    app_client: Any, device_factory: Any, device_users: Any, connect: Any
) -> None:
    dev = await device_factory()
    await device_users(dev.id, dev.token)
    for user, password in ((dev.id, ""), (dev.id, "not-the-token"), ("nobody", "x")):
        with pytest.raises((ProbableAuthenticationError, AMQPConnectionError)):
            await connect(user, password)


async def test_own_credential_is_stored_and_bad_readings_dead_lettered(
    app_client: Any,
    device_factory: Any,
    device_users: Any,
    connect: Any,
    bus: Any,
    settings: Any,
    rabbitmq_vhost: Any,
) -> None:
    dev = await device_factory()
    await device_users(dev.id, dev.token)
    conn = await connect(dev.id, dev.token)
    key = f"device.{dev.id}"
    await publish(conn, key, json.dumps(reading(seq=1)).encode(), user_id=dev.id)
    await publish(conn, key, b"{broken", user_id=dev.id)
    batch = [reading(float(i), seq=10 + i) for i in range(20)]
    await publish(conn, key, json.dumps(batch).encode(), user_id=dev.id)
    await bus.until(
        lambda: len(bus.readings(dev.id)) == 21 and len(bus.dead) == 1, what="amqp readings"
    )
    assert all(env.source == "amqp" for env in bus.raw)
    assert bus.reasons() == [R.NOT_JSON]
    assert sorted(r.seq for r in bus.readings(dev.id)) == [1, *range(10, 30)]
    # Everything was acknowledged only after Kafka had it: nothing is left on the queue.
    await _queue_empty(rabbitmq_vhost, connect, settings.amqp_queue)


async def test_another_devices_credential_stores_nothing(
    app_client: Any, device_factory: Any, device_users: Any, connect: Any, bus: Any
) -> None:
    victim, attacker = await device_factory(), await device_factory()
    await device_users(victim.id, victim.token)
    await device_users(attacker.id, attacker.token)
    conn = await connect(attacker.id, attacker.token)
    # The broker refuses another device's routing key outright (topic permission).
    with pytest.raises(ChannelAccessRefused):
        await publish(conn, f"device.{victim.id}", json.dumps(reading()).encode())
    with pytest.raises(ChannelAccessRefused):
        await publish(
            conn, f"device.{victim.id}", json.dumps(reading()).encode(), user_id=attacker.id
        )
    # A proof that the bridge consumed past where the attack would be.
    await publish(
        conn, f"device.{attacker.id}", json.dumps(reading(seq=7)).encode(), user_id=attacker.id
    )
    await bus.until(lambda: len(bus.readings(attacker.id)) == 1, what="the attacker's own")
    assert bus.readings(victim.id) == []


async def test_a_message_without_the_devices_user_id_is_dead_lettered_unauthorized(
    app_client: Any,
    device_factory: Any,
    device_users: Any,
    connect: Any,
    bus: Any,
    rabbitmq_vhost: Any,
) -> None:
    """Whatever the broker let through — no user_id (a device that does not set it, a shared
    account), or an account that may write other devices' keys (a mis-granted permission, an
    administrator) — the bridge stores only what the device's own account sent."""
    dev, other = await device_factory(), await device_factory()
    await device_users(dev.id, dev.token)
    own = await connect(dev.id, dev.token)
    await publish(own, f"device.{dev.id}", json.dumps(reading(seq=1)).encode())  # no user_id
    admin = await connect(None, None)  # may write any key: the broker cannot tell
    body = json.dumps(reading(seq=2)).encode()
    await publish(admin, f"device.{dev.id}", body)
    await publish(admin, f"device.{other.id}", body, user_id=rabbitmq_vhost.admin_username)
    await publish(own, f"device.{dev.id}", json.dumps(reading(seq=3)).encode(), user_id=dev.id)
    await bus.until(lambda: len(bus.dead) == 3 and bus.readings(dev.id), what="dead letters")
    assert bus.reasons() == [R.UNAUTHORIZED] * 3
    assert {d.device_id for d in bus.dead} == {dev.id, other.id}
    assert sum("no user_id" in d.detail for d in bus.dead) == 2
    assert [r.seq for r in bus.readings(dev.id)] == [3]
    assert bus.readings(other.id) == []


async def test_in_flight_bytes_are_bounded_not_only_messages(
    rabbitmq_vhost: Any, connect: Any
) -> None:
    """A flood of large messages while the handler is stuck (Kafka slow): the consumer holds
    at most ``max_in_flight_bytes`` of them, although its prefetch would allow 50 messages."""
    queue = f"ingest-bridge.bytes.{secrets.token_hex(4)}"
    release = asyncio.Event()
    handled: list[int] = []

    async def handler(batch: list[Any]) -> None:
        await release.wait()
        handled.extend(len(m.body) for m in batch)

    consumer = AmqpBatchConsumer(
        url=rabbitmq_vhost.bridge_url,
        exchange=TELEMETRY_EXCHANGE,
        queue=queue,
        binding_key="device.flood",
        handler=handler,
        prefetch=50,
        max_batch_messages=50,
        max_in_flight_bytes=256 * 1024,
        max_message_size=64 * 1024,
        name="bytes-test",
    )
    await consumer.run()
    admin = await connect(None, None)
    size = 60 * 1024
    try:
        for _ in range(40):
            await publish(admin, "device.flood", b"x" * size)
        peak = 0
        deadline = time.monotonic() + 1.0  # long enough for the broker to push a prefetch
        while time.monotonic() < deadline:
            peak = max(peak, consumer.in_flight_bytes)
            await asyncio.sleep(0.01)
        assert 0 < peak <= 256 * 1024
        release.set()
        start = time.monotonic()
        while len(handled) < 40 or consumer.in_flight_bytes:
            assert time.monotonic() - start < 20, f"{len(handled)} of 40 handled"
            await asyncio.sleep(0.02)
    finally:
        release.set()
        await consumer.close()
        channel = await admin.channel()
        await channel.queue_delete(queue)
