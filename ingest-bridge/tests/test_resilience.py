"""Crash and outage behaviour: kill -9 mid-stream loses nothing; a Kafka outage is survived."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
from asgi_lifespan import LifespanManager

from ingest_bridge.main import create_app
from iotctl.broker import TansuBroker, free_port


def start_bridge(env: dict[str, str], log_path: str) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ingest_bridge"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "bridge exited"
            try:
                if (await client.get(f"http://127.0.0.1:{port}/ready")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("bridge did not become ready")


async def test_kill_9_mid_stream_loses_no_reading(
    make_settings,
    device_factory,
    tools,
    kafka_bootstrap,
    mqtt_address,
    test_publisher_account,
    tmp_path,
):
    port = free_port()
    settings = make_settings(
        http_port=port, http_host="127.0.0.1", amqp_enabled=False, device_events_enabled=False
    )
    env = tools.settings_env(settings)
    dev = await device_factory()
    topic = f"{settings.mqtt_topic_prefix}devices/{dev.id}/telemetry"
    bus = tools.BusReader(kafka_bootstrap, settings.topics)
    await tools.create_topics(kafka_bootstrap, settings.topics)
    await bus.consumer.start()
    log = str(tmp_path / "bridge.log")
    proc = start_bridge(env, log)
    try:
        await wait_ready(port, proc)
        total = 900
        pub = tools.Publisher(*mqtt_address, test_publisher_account)

        def send() -> None:
            start = time.monotonic()
            for i in range(total):
                pub.publish(topic, {"ts": time.time(), "metrics": {"n": i}, "seq": i})
                delay = start + (i + 1) / 300 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            pub.flush()

        sender = threading.Thread(target=send)
        sender.start()

        def numbers() -> set[int]:
            return {r.seq for r in bus.readings(dev.id)}

        for kill_at in (150, 450):
            await bus.until(lambda n=kill_at: len(numbers()) >= n, what=f"{kill_at} readings")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = start_bridge(env, log)
            await wait_ready(port, proc)
        await asyncio.to_thread(sender.join)
        pub.close()
        await bus.until(lambda: len(numbers()) == total, timeout=40, what="every number")
        assert numbers() == set(range(total))
    finally:
        proc.terminate()
        proc.wait(10)
        await bus.consumer.stop()


async def test_kafka_outage_stops_intake_reports_not_ready_and_recovers(
    make_settings, device_factory, tools, publisher
):
    broker = TansuBroker(port=free_port())
    broker.start()
    settings = make_settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_stall_seconds=1.0,
        kafka_request_timeout_ms=3000,
        max_in_flight_messages=40,
        amqp_enabled=False,
        device_events_enabled=False,
    )
    dev = await device_factory()
    topic = f"{settings.mqtt_topic_prefix}devices/{dev.id}/telemetry"
    app = create_app(settings)
    try:
        async with (
            LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://b"
            ) as client,
        ):

            async def ready() -> bool:
                return (await client.get("/ready")).status_code == 200

            async def not_ready() -> bool:
                return (await client.get("/ready")).status_code == 503

            await tools.wait_for(ready, what="ready")
            bridge = app.state.bridge
            broker.stop()
            for i in range(200):
                publisher.publish(topic, {"ts": time.time(), "metrics": {"n": i}, "seq": i})
            publisher.flush()
            await tools.wait_for(not_ready, timeout=20, what="not ready during the outage")
            body = (await client.get("/ready")).json()
            assert body["reasons"]
            # Intake stopped at the in-flight bound instead of buffering without limit.
            assert bridge.mqtt.in_flight <= settings.max_in_flight_messages + 200
            r = await client.post(
                f"/ingest/{dev.id}",
                json={"ts": time.time(), "metrics": {"n": 1}},
                headers={"Authorization": f"Bearer {dev.token}"},
            )
            assert r.status_code == 503
            assert "Retry-After" in r.headers

            broker.start()  # same port, empty (memory) broker
            await tools.create_topics(broker.bootstrap, settings.topics)
            await tools.wait_for(ready, timeout=60, what="ready again after the outage")
            bus = tools.BusReader(broker.bootstrap, settings.topics)
            await bus.consumer.start()
            try:
                await bus.until(
                    lambda: {r.seq for r in bus.readings(dev.id)} >= set(range(200)),
                    timeout=40,
                    what="readings sent during the outage",
                )
            finally:
                await bus.consumer.stop()
    finally:
        broker.stop()
