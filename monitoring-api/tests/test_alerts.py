"""Alerts: listing is scoped to the caller; ack/clear change the store and go to the bus."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from iot_common.events import Alert, alert_decoder


def make_alert(device: str, owner: str | None, severity: str = "warning", **kw: Any) -> Alert:
    started = kw.pop("started_at", time.time() - 30)
    rule = kw.pop("rule_id", "hot")
    return Alert(
        alert_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{device}/{rule}/{started}")),
        device_id=device,
        rule_id=rule,
        rule_type=kw.pop("rule_type", "threshold"),
        severity=severity,
        status=kw.pop("status", "active"),
        message="temp above 30",
        started_at=started,
        updated_at=started,
        metric="temp",
        value=31.5,
        threshold=30.0,
        owner_id=owner,
        **kw,
    )


@pytest.fixture
async def alerts_topic_reader(kafka_bootstrap: str, topic_prefix: str) -> Any:
    consumer = AIOKafkaConsumer(
        f"{topic_prefix}alerts",
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{topic_prefix}reader-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    yield consumer
    await consumer.stop()


async def read_alerts(consumer: AIOKafkaConsumer, alert_id: str, n: int) -> list[Alert]:
    seen: list[Alert] = []
    deadline = time.monotonic() + 20
    while len(seen) < n and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for rec in records:
                a = alert_decoder.decode(rec.value)
                if a.alert_id == alert_id:
                    assert rec.key == a.device_id.encode()
                    seen.append(a)
    return seen


async def test_ack_then_clear_is_stored_and_produced(
    app_factory: Any, make_user: Any, registry: Any, store: Any, alerts_topic_reader: Any
) -> None:
    alice = make_user("operator")
    dev = await registry.add(alice)
    alert = make_alert(dev, alice.id)
    await store.upsert_alerts([alert])
    app = await app_factory()
    c = app.client

    listed = await c.get("/monitoring/alerts", params={"status": "active"}, headers=alice.headers)
    assert [a["alert_id"] for a in listed.json()["items"]] == [alert.alert_id]

    one = await c.get(f"/monitoring/alerts/{alert.alert_id}", headers=alice.headers)
    assert one.status_code == 200, one.text
    assert one.json()["alert_id"] == alert.alert_id and one.json()["status"] == "active"

    r = await c.post(f"/monitoring/alerts/{alert.alert_id}/ack", headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "acknowledged" and r.json()["acknowledged_by"] == alice.id
    stored = await store.get_alert(alert.alert_id)
    assert stored.status == "acknowledged"
    again = await c.post(f"/monitoring/alerts/{alert.alert_id}/ack", headers=alice.headers)
    assert again.status_code == 200

    r = await c.post(f"/monitoring/alerts/{alert.alert_id}/clear", headers=alice.headers)
    assert r.status_code == 200 and r.json()["status"] == "cleared"
    r = await c.post(f"/monitoring/alerts/{alert.alert_id}/ack", headers=alice.headers)
    assert r.status_code == 409

    produced = await read_alerts(alerts_topic_reader, alert.alert_id, 3)
    assert [a.status for a in produced] == ["acknowledged", "acknowledged", "cleared"]
    assert produced[0].owner_id == alice.id

    by_status = await c.get(
        "/monitoring/alerts", params={"status": "cleared", "device_id": dev}, headers=alice.headers
    )
    assert [a["alert_id"] for a in by_status.json()["items"]] == [alert.alert_id]


async def test_alerts_are_scoped_filtered_and_guarded(
    app_factory: Any, make_user: Any, registry: Any, store: Any
) -> None:
    alice, bob, viewer = make_user("operator"), make_user("operator"), make_user("viewer")
    dev_a, dev_b, dev_v = (
        await registry.add(alice),
        await registry.add(bob),
        await registry.add(viewer),
    )
    a_warn = make_alert(dev_a, alice.id, "warning", rule_id="w")
    a_crit = make_alert(dev_a, alice.id, "critical", rule_id="c")
    b_crit = make_alert(dev_b, bob.id, "critical")
    v_info = make_alert(dev_v, viewer.id, "info")
    await store.upsert_alerts([a_warn, a_crit, b_crit, v_info])
    c = (await app_factory(kafka_enabled=False)).client

    mine = (await c.get("/monitoring/alerts", headers=alice.headers)).json()["items"]
    assert {a["alert_id"] for a in mine} == {a_warn.alert_id, a_crit.alert_id}
    crit = (
        await c.get("/monitoring/alerts", params={"severity": "critical"}, headers=alice.headers)
    ).json()["items"]
    assert [a["alert_id"] for a in crit] == [a_crit.alert_id]

    r = await c.post(f"/monitoring/alerts/{b_crit.alert_id}/ack", headers=alice.headers)
    assert r.status_code == 404
    r = await c.get(f"/monitoring/alerts/{b_crit.alert_id}", headers=alice.headers)
    assert r.status_code == 404
    r = await c.post(f"/monitoring/alerts/{v_info.alert_id}/ack", headers=viewer.headers)
    assert r.status_code == 403
    assert (await store.get_alert(v_info.alert_id)).status == "active"
    r = await c.post("/monitoring/alerts/no-such-alert/ack", headers=alice.headers)
    assert r.status_code == 404
    r = await c.get(
        "/monitoring/alerts",
        params={"start": time.time(), "end": time.time() - 100},
        headers=alice.headers,
    )
    assert r.status_code == 422


async def test_health(app_factory: Any) -> None:
    c = (await app_factory()).client
    r = await c.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["kafka"] == "ok"
    await asyncio.sleep(0)


async def test_queries_work_while_kafka_is_unreachable(
    app_factory: Any, make_user: Any, registry: Any, store: Any
) -> None:
    from iotctl.broker import free_port

    alice = make_user("operator")
    dev = await registry.add(alice)
    alert = make_alert(dev, alice.id)
    await store.upsert_alerts([alert])
    t = time.monotonic()
    app = await app_factory(kafka_bootstrap=f"127.0.0.1:{free_port()}", wait_kafka=False)
    assert time.monotonic() - t < 20
    health = await app.client.get("/health")
    assert health.status_code == 200 and health.json()["kafka"] == "starting"
    r = await app.client.get("/monitoring/alerts", params={"device_id": dev}, headers=alice.headers)
    assert [a["alert_id"] for a in r.json()["items"]] == [alert.alert_id]
    # Acknowledging stores the change and says it could not be announced yet.
    r = await app.client.post(f"/monitoring/alerts/{alert.alert_id}/ack", headers=alice.headers)
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert (await store.get_alert(alert.alert_id)).status == "acknowledged"
