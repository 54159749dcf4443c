"""HTTP ingest: device token auth, 202 once Kafka has the readings, errors and dead letters."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from iot_common.telemetry import DeadLetterReason as R


def reading(value: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"ts": time.time(), "metrics": {"temp": value}, **extra}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_accepted_readings_are_on_kafka_when_202_is_answered(app_client, device_factory, bus):
    client, _ = app_client
    dev = await device_factory()
    r = await client.post(f"/ingest/{dev.id}", json=reading(seq=1), headers=auth(dev.token))
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 1, "rejected": 0, "rejections": []}
    batch = [reading(float(i), seq=100 + i) for i in range(500)]
    r = await client.post(f"/ingest/{dev.id}", json=batch, headers=auth(dev.token))
    assert r.status_code == 202
    assert r.json()["accepted"] == 500
    # Already acknowledged by Kafka, so a reader finds them straight away.
    await bus.until(lambda: len(bus.readings(dev.id)) == 501, timeout=10, what="readings")
    assert all(env.source == "http" for env in bus.raw)


async def test_partial_batch_reports_rejections_and_dead_letters_them(
    app_client, device_factory, bus
):
    client, _ = app_client
    dev = await device_factory()
    batch = [reading(seq=1), {"ts": time.time(), "metrics": {"t": "x"}}, reading(seq=2)]
    r = await client.post(f"/ingest/{dev.id}", json=batch, headers=auth(dev.token))
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 2
    assert body["rejections"][0]["index"] == 1
    assert body["rejections"][0]["reason"] == R.NON_NUMERIC_METRIC
    await bus.until(lambda: len(bus.dead) == 1 and len(bus.readings()) == 2, what="outcome")
    assert bus.dead[0].source == "http"


async def test_credentials_are_checked(app_client, device_factory, bus):
    client, _ = app_client
    dev = await device_factory()
    other = await device_factory()
    url = f"/ingest/{dev.id}"
    assert (await client.post(url, json=reading())).status_code == 401
    assert (await client.post(url, json=reading(), headers=auth("nope"))).status_code == 401
    wrong = await client.post(url, json=reading(), headers=auth(other.token))
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "unauthorized"
    unknown = "0b7f7a38-63f4-4cd4-9a48-2f1c9a3a0a77"
    stranger = await client.post(f"/ingest/{unknown}", json=reading(), headers=auth("whatever"))
    # A stranger cannot tell an existing device with a wrong token from an id that does not
    # exist: same status, same body (apart from the request id).
    assert stranger.status_code == 401
    assert _error(stranger) == _error(wrong)

    inactive = await device_factory(active=False)
    r = await client.post(f"/ingest/{inactive.id}", json=reading(), headers=auth(inactive.token))
    assert r.status_code == 403
    # Only the authenticated (deactivated) device's reading is dead-lettered; the refused
    # requests leave nothing on the bus.
    await bus.until(lambda: len(bus.dead) == 1, what="dead letters")
    await asyncio.sleep(1.0)
    await bus.poll()
    assert bus.reasons() == [R.INACTIVE_DEVICE]
    assert bus.raw == []


def _error(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = dict(response.json()["error"])
    body.pop("request_id", None)
    return body


async def test_whole_message_errors(app_client, device_factory, bus):
    client, _ = app_client
    dev = await device_factory()
    url = f"/ingest/{dev.id}"
    h = auth(dev.token)
    r = await client.post(url, content=b"{not json", headers=h)
    assert r.status_code == 400
    r = await client.post(url, content=b"[" + b" " * 70_000 + b"]", headers=h)
    assert r.status_code == 413
    r = await client.post(url, json={"ts": time.time() + 86400, "metrics": {"t": 1}}, headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["type"] == R.FUTURE_TIMESTAMP
    await bus.until(lambda: len(bus.dead) == 3, what="dead letters")
    assert sorted(bus.reasons()) == sorted([R.NOT_JSON, R.TOO_LARGE, R.FUTURE_TIMESTAMP])


async def test_probes_and_metrics(app_client, device_factory):
    client, _ = app_client
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["kafka"]["connected"] is True
    ready = await client.get("/ready")
    assert ready.status_code == 200
    dev = await device_factory()
    await client.post(f"/ingest/{dev.id}", json=reading(), headers=auth(dev.token))
    text = (await client.get("/metrics")).text
    assert 'ingest_readings_produced_total{source="http"}' in text
    assert "ingest_in_flight_messages" in text
    assert "ingest_batch_messages_bucket" in text


async def test_device_management_fallback_and_its_outage(
    make_settings, device_factory, fake_dm, bus
):
    import hashlib

    import httpx
    from asgi_lifespan import LifespanManager

    from ingest_bridge.main import create_app

    dev = await device_factory(cached=False)
    fake_dm.devices[dev.id] = {
        "id": dev.id,
        "active": True,
        "owner_id": "o",
        "token_hash": hashlib.sha256(dev.token.encode()).hexdigest(),
        "config_version": 1,
        "type": "sensor",
    }
    stranger = await device_factory(cached=False)  # in neither cache nor device-management
    for url, expect in ((fake_dm.url, 202), ("http://127.0.0.1:9", 503)):
        app = create_app(
            make_settings(
                device_management_url=url,
                mqtt_enabled=False,
                amqp_enabled=False,
                device_events_enabled=False,
            )
        )
        async with (
            LifespanManager(app) as m,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://b") as c,
        ):
            deadline = time.monotonic() + 20
            while (await c.get("/ready")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            r = await c.post(f"/ingest/{dev.id}", json=reading(), headers=auth(dev.token))
            assert r.status_code == expect, r.text
            if expect == 202:
                r = await c.post(
                    f"/ingest/{stranger.id}", json=reading(), headers=auth(stranger.token)
                )
                assert r.status_code == 401
    await bus.until(lambda: len(bus.readings(dev.id)) == 1, what="outcome")
    # The stranger was refused before anything was produced: no dead letter for it.
    await asyncio.sleep(1.0)
    await bus.poll()
    assert bus.dead == []
