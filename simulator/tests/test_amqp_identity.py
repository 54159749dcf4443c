"""The simulator's AMQP transport publishes as each device: its own RabbitMQ user and token,
``user_id`` set, so the bridge takes its readings (this session's private vhost)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aio_pika

from iot_common import rabbitmq
from iot_common.topics import TELEMETRY_EXCHANGE
from simulator.transports import AmqpTransport, TransportConfig


async def test_each_device_publishes_with_its_own_credential_and_user_id(
    rabbitmq_vhost: Any,
) -> None:
    devices = {str(uuid.uuid4()): f"token-{i}" for i in range(3)}
    api = rabbitmq_vhost.management()
    await api.import_definitions(
        rabbitmq.device_definitions(
            rabbitmq_vhost.name,
            TELEMETRY_EXCHANGE,
            [(d, rabbitmq.password_hash(t), True) for d, t in devices.items()],
        )
    )
    admin = await aio_pika.connect(rabbitmq_vhost.url())
    tap = await (await admin.channel()).declare_queue(exclusive=True)
    await tap.bind(TELEMETRY_EXCHANGE, routing_key="device.*")
    # The shared URL's user only says where the broker is; devices log in as themselves.
    transport = AmqpTransport(
        TransportConfig(kind="amqp", rabbitmq_url=rabbitmq_vhost.url("nobody", "nothing"))
    )
    try:
        await transport.start()
        for did, token in devices.items():
            await transport.publish(did, b"{}", token=token, expect_reject=False)
        await transport.flush(10)
        assert (transport.acked, transport.failed) == (3, 0)
        got: list[tuple[str | None, str]] = []
        deadline = time.monotonic() + 5
        while len(got) < 3:
            assert time.monotonic() < deadline, got
            msg = await tap.get(fail=False)
            if msg is None:
                await asyncio.sleep(0.02)
                continue
            got.append((msg.user_id, msg.routing_key or ""))
        assert sorted(got) == sorted((d, f"device.{d}") for d in devices)
    finally:
        await transport.close()
        await admin.close()
        await api.delete_users(list(devices))
        await api.aclose()
