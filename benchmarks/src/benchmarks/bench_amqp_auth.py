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


def _rabbitmq_rss_mb() -> float | None:
    """Resident memory of the machine's RabbitMQ node (its Erlang VM), if it runs here."""
    import psutil

    for proc in psutil.process_iter(["name", "memory_info"]):
        if proc.info["name"] == "beam.smp" and proc.info["memory_info"] is not None:
            return float(proc.info["memory_info"].rss) / 2**20
    return None


async def _provisioning(n: int, batch: int = 200) -> dict[str, Any]:
    """``n`` device users created as device-management's AMQP provisioner creates them: one
    definitions import (users, permissions, topic permissions) per ``batch`` devices, in a
    throw-away vhost; seconds, and the broker's memory before and after."""
    vhost = f"bench-prov-{secrets.token_hex(4)}"
    admin_user, _, admin_pw = RABBITMQ.split("@", 1)[0].removeprefix("amqp://").partition(":")
    api = Management(MANAGEMENT, username=admin_user, password=admin_pw, timeout=120)
    users = [
        (str(uuid.uuid4()), rabbitmq.password_hash(secrets.token_urlsafe(32)), True)
        for _ in range(n)
    ]
    try:
        await api.put_vhost(vhost)
        await asyncio.sleep(1)
        rss0 = _rabbitmq_rss_mb()
        t0 = time.monotonic()
        for i in range(0, n, batch):
            await api.import_definitions(
                rabbitmq.device_definitions(vhost, EXCHANGE, users[i : i + batch])
            )
        seconds = time.monotonic() - t0
        await asyncio.sleep(1)
        rss1 = _rabbitmq_rss_mb()
        t1 = time.monotonic()
        await api.import_definitions(
            rabbitmq.device_definitions(
                vhost, EXCHANGE, [(users[0][0], rabbitmq.password_hash("rotated"), True)]
            )
        )
        one_change = time.monotonic() - t1
    finally:
        names = [u[0] for u in users]
        for i in range(0, len(names), 1000):
            await api.delete_users(names[i : i + 1000])
        await api.delete_vhost(vhost)
        await api.aclose()
    return {
        "devices": n,
        "seconds": round(seconds, 2),
        "per_device_ms": round(seconds / n * 1000, 2),
        "broker_rss_mb_before": None if rss0 is None else round(rss0, 1),
        "broker_rss_mb_after": None if rss1 is None else round(rss1, 1),
        "one_more_change_ms": round(one_change * 1000, 1),
    }


def run(results_dir: pathlib.Path, *, quick: bool = False) -> dict[str, Any]:
    return asyncio.run(_main(quick))


def main() -> None:
    """``python -m benchmarks.bench_amqp_auth provisioning [N]``: N device users (10,000)."""
    import json
    import sys

    args = sys.argv[1:]
    if args and args[0] == "provisioning":
        n = int(args[1]) if len(args) > 1 else 10_000
        out = asyncio.run(_provisioning(n))
        out["load_average"] = round(os.getloadavg()[0], 1)
    else:
        out = run(pathlib.Path("benchmarks/results"), quick="--quick" in args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
