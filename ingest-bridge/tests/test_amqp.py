"""The device-events relay, end to end against RabbitMQ and Kafka (telemetry over AMQP, with
device identity, is in test_amqp_identity.py)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from iot_common.telemetry import DeadLetterReason as R


def reading(value: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"ts": time.time(), "metrics": {"temp": value}, **extra}


@pytest.fixture
async def rabbit(rabbitmq_url: str, settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    conn = await aio_pika.connect_robust(rabbitmq_url)
    channel = await conn.channel(publisher_confirms=True)
    yield channel
    cleanup = await conn.channel()
    for queue in (settings.amqp_queue, settings.device_events_queue):
        try:
            await cleanup.queue_delete(queue)
        except Exception:
            cleanup = await conn.channel()
    for exchange in (settings.telemetry_exchange, settings.device_events_exchange):
        try:
            await cleanup.exchange_delete(exchange)
        except Exception:
            cleanup = await conn.channel()
    await conn.close()


async def publish(channel, exchange: str, key: str, body: bytes, **kw: Any) -> None:
    ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    await ex.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **kw),
        routing_key=key,
    )


async def test_device_events_are_forwarded_to_kafka_unchanged(app_client, rabbit, bus, settings):
    did = str(uuid.uuid4())
    event = {
        "event_id": str(uuid.uuid4()),
        "event_type": "device.created",
        "device_id": did,
        "timestamp": time.time(),
        "owner_id": str(uuid.uuid4()),
        "device": {"id": did, "name": "pump", "type": "sensor", "active": True},
    }
    body = json.dumps(event).encode()
    await publish(
        rabbit,
        settings.device_events_exchange,
        "device.created",
        body,
        message_id=event["event_id"],
    )
    custom = {**event, "event_id": str(uuid.uuid4()), "event_type": "device.event.door"}
    custom_body = json.dumps({**custom, "payload": {"open": True}}).encode()
    await publish(rabbit, settings.device_events_exchange, "device.event.door", custom_body)
    await publish(rabbit, settings.device_events_exchange, "device.updated", b"garbage")
    await bus.until(lambda: len(bus.events) == 2 and len(bus.dead) == 1, what="device events")
    assert bus.events[0] == (did.encode(), body)
    assert bus.events[1] == (did.encode(), custom_body)
    assert bus.dead[0].reason == R.UNDECODABLE
    assert bus.dead[0].payload == b"garbage"
