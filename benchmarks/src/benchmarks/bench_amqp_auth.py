"""AMQP ingest with device identity against the path before it, in one run, on this machine's
RabbitMQ (a throw-away vhost, deleted at the end).

Both runs publish the same readings from the same number of connections (one per device) with
publisher confirms, and the bridge's AMQP consumer (``AmqpTelemetrySource``'s consumer, with its
``user_id`` check) takes them off the queue; the figure is readings per second from the first
publish until the consumer has every one.

- *before* (baseline): every device publishes as one shared administrator-like account (full
  permissions, no topic permission), without ``user_id``; the consumer does not check it;
- *with auth*: each device is its own RabbitMQ user with the device permissions of
  ``iot_common.rabbitmq`` (topic permission on its routing key), sets ``user_id``, and the
  consumer stores only what ``may_write`` allows (all of it here).

Run: ``uv run benchmarks amqp_auth`` (``--quick``: fewer readings).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import secrets
import time
import uuid
from typing import Any

import aio_pika

from ingest_bridge.sources.amqp import AmqpBatchConsumer, may_write
from iot_common import rabbitmq
from iot_common.rabbitmq import Management, device_from_routing_key

RABBITMQ = os.environ.get("IOT_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
MANAGEMENT = os.environ.get("IOT_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
EXCHANGE = "telemetry"
BODY = b'{"ts": 1700000000.0, "metrics": {"temp": 21.5}, "seq": 1}'


async def _one(vhost: str, devices: dict[str, str], per_device: int, auth: bool) -> float:
    host = RABBITMQ.split("@", 1)[1].split("/", 1)[0]
    admin = RABBITMQ.split("@", 1)[0].removeprefix("amqp://")
    total = len(devices) * per_device
    got = 0
    done = asyncio.Event()

    async def handler(batch: list[Any]) -> None:
        nonlocal got
        for msg in batch:
            did = device_from_routing_key(msg.routing_key or "")
            if did is not None and (not auth or may_write(msg.user_id, did)):
                got += 1
        if got >= total:
            done.set()

    consumer = AmqpBatchConsumer(
        url=f"amqp://{admin}@{host}/{vhost}",
        exchange=EXCHANGE,
        queue=f"ingest-bridge.bench.{secrets.token_hex(3)}",
        binding_key="device.*",
        handler=handler,
        prefetch=2000,
        max_batch_messages=2000,
        max_message_size=64 * 1024,
        name="bench",
    )
    await consumer.run()
    conns = []
    for did, token in devices.items():
        creds = f"{did}:{token}" if auth else admin
        conns.append((did, await aio_pika.connect(f"amqp://{creds}@{host}/{vhost}")))
    try:
        started = time.perf_counter()

        async def publish(did: str, conn: Any) -> None:
            channel = await conn.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(EXCHANGE, ensure=False)
            window = asyncio.Semaphore(200)

            async def one() -> None:
                async with window:
                    await exchange.publish(
                        aio_pika.Message(BODY, user_id=did if auth else None),
                        routing_key=f"device.{did}",
                    )

            await asyncio.gather(*(one() for _ in range(per_device)))

        await asyncio.gather(*(publish(did, conn) for did, conn in conns))
        await asyncio.wait_for(done.wait(), 120)
        return total / (time.perf_counter() - started)
    finally:
        for _, conn in conns:
            await conn.close()
        await consumer.close()


async def _main(quick: bool) -> dict[str, Any]:
    vhost = f"iot-bench-{secrets.token_hex(4)}"
    admin_user, _, admin_pw = RABBITMQ.split("@", 1)[0].removeprefix("amqp://").partition(":")
    devices = {str(uuid.uuid4()): secrets.token_urlsafe(16) for _ in range(20)}
    per_device = 500 if quick else 2500
    api = Management(MANAGEMENT, username=admin_user, password=admin_pw)
    try:
        await api.import_definitions(
            {
                "vhosts": [{"name": vhost}],
                "exchanges": [
                    {
                        "name": EXCHANGE,
                        "vhost": vhost,
                        "type": "topic",
                        "durable": True,
                        "auto_delete": False,
                        "internal": False,
                        "arguments": {},
                    }
                ],
                "permissions": [
                    {
                        "user": admin_user,
                        "vhost": vhost,
                        "configure": ".*",
                        "write": ".*",
                        "read": ".*",
                    }
                ],
            }
        )
        await api.import_definitions(
            rabbitmq.device_definitions(
                vhost,
                EXCHANGE,
                [(d, rabbitmq.password_hash(t), True) for d, t in devices.items()],
            )
        )
        # Alternate, twice each, so drift on a shared machine hits both alike.
        before, after = [], []
        for _ in range(2):
            before.append(await _one(vhost, devices, per_device, auth=False))
            after.append(await _one(vhost, devices, per_device, auth=True))
    finally:
        await api.delete_vhost(vhost)
        await api.delete_users(list(devices))
        await api.aclose()
    b, a = max(before), max(after)
    return {
        "devices": len(devices),
        "readings_per_run": len(devices) * per_device,
        "before_readings_per_s": round(b),
        "with_auth_readings_per_s": round(a),
        "ratio_with_auth_vs_before": round(a / b, 3),
        "summary": [
            f"AMQP ingest, {len(devices)} devices x {per_device} readings (confirms, bridge "
            f"consumer): before **{b:,.0f}/s** (shared account, no user_id; baseline, same "
            f"run), with device identity **{a:,.0f}/s** (ratio {a / b:.2f}; best of 2 each)",
        ],
    }


def run(results_dir: pathlib.Path, *, quick: bool = False) -> dict[str, Any]:
    return asyncio.run(_main(quick))
