"""Webhook subscriptions: signed, idempotent, retried with backoff, failed after N, durable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from iot_common.events import Alert, json_encoder
from iotctl.broker import free_port
from monitoring_api.webhooks import verify_signature


@dataclass
class Receiver:
    """A local webhook receiver that fails the first ``fail_first`` attempts of each delivery."""

    fail_first: int = 0
    url: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)

    def by_key(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for c in self.calls:
            out.setdefault(c["headers"]["idempotency-key"], []).append(c)
        return out

    async def handle(self, request: Request) -> JSONResponse:
        body = await request.body()
        key = request.headers.get("idempotency-key", "")
        seen = sum(1 for c in self.calls if c["headers"].get("idempotency-key") == key)
        self.calls.append({"headers": dict(request.headers), "body": body, "at": time.monotonic()})
        if seen < self.fail_first:
            return JSONResponse({"error": "try later"}, status_code=503)
        return JSONResponse({"ok": True})


@pytest.fixture
async def receiver_factory() -> AsyncIterator[Any]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(fail_first: int) -> Receiver:
            rec = Receiver(fail_first=fail_first)
            port = free_port()
            app = Starlette(routes=[Route("/hook", rec.handle, methods=["POST"])])
            server = uvicorn.Server(
                uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
            )
            task = asyncio.create_task(server.serve())

            async def stop() -> None:
                server.should_exit = True
                await task

            stack.push_async_callback(stop)
            while not server.started:
                await asyncio.sleep(0.02)
            rec.url = f"http://127.0.0.1:{port}/hook"
            return rec

        yield make


def make_alert(device: str, owner: str, severity: str = "warning") -> Alert:
    now = time.time()
    return Alert(
        alert_id=str(uuid.uuid4()),
        device_id=device,
        rule_id=f"r-{uuid.uuid4().hex[:4]}",
        rule_type="threshold",
        severity=severity,
        status="active",
        message="too hot",
        started_at=now,
        updated_at=now,
        owner_id=owner,
    )


async def produce(kafka_bootstrap: str, topic: str, alerts: list[Alert]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await p.start()
    try:
        for a in alerts:
            await p.send_and_wait(topic, json_encoder.encode(a), key=a.device_id.encode())
    finally:
        await p.stop()


async def test_retries_until_delivered_with_signature_and_idempotency_key(
    app_factory: Any,
    receiver_factory: Any,
    make_user: Any,
    registry: Any,
    store: Any,
    kafka_bootstrap: str,
    topic_prefix: str,
    poll: Any,
) -> None:
    alice, bob = make_user("operator"), make_user("operator")
    dev_a, dev_b = await registry.add(alice), await registry.add(bob)
    rec = await receiver_factory(fail_first=2)
    app = await app_factory()
    c = app.client
    r = await c.post(
        "/monitoring/subscriptions",
        json={"url": rec.url, "min_severity": "warning", "secret": "s" * 32},
        headers=alice.headers,
    )
    assert r.status_code == 201, r.text
    sub = r.json()
    assert sub["secret"] == "s" * 32

    hot = make_alert(dev_a, alice.id, "critical")
    await store.upsert_alerts([hot])
    await produce(
        kafka_bootstrap,
        f"{topic_prefix}alerts",
        [hot, make_alert(dev_a, alice.id, "info"), make_alert(dev_b, bob.id, "critical")],
    )
    await poll(lambda: len(rec.calls) >= 3, timeout=20)
    # The user acknowledges it: that change is delivered too.
    assert (
        await c.post(f"/monitoring/alerts/{hot.alert_id}/ack", headers=alice.headers)
    ).is_success
    await poll(lambda: len(rec.by_key()) >= 2 and len(rec.calls) >= 6, timeout=20)
    await asyncio.sleep(0.5)

    groups = list(rec.by_key().values())
    assert [len(g) for g in groups] == [3, 3]  # two failures then success, one key each
    kinds = []
    for g in groups:
        for call in g:
            assert verify_signature("s" * 32, call["headers"]["x-iot-signature"], call["body"])
            assert not verify_signature(
                "wrong-secret-xxxxxxx", call["headers"]["x-iot-signature"], call["body"]
            )
        payload = json.loads(g[0]["body"])
        assert payload["alert"]["alert_id"] == hot.alert_id
        kinds.append(payload["type"])
    assert kinds == ["alert.active", "alert.acknowledged"]

    async def delivered() -> bool:
        body = (await c.get(f"/monitoring/subscriptions/{sub['id']}", headers=alice.headers)).json()
        return body["deliveries"]["delivered"] == 2

    await poll(delivered)
    deliveries = (
        await c.get(f"/monitoring/subscriptions/{sub['id']}/deliveries", headers=alice.headers)
    ).json()
    assert {d["status"] for d in deliveries} == {"delivered"}
    assert {d["attempts"] for d in deliveries} == {3}


async def test_marked_failed_after_the_configured_attempts(
    app_factory: Any, receiver_factory: Any, make_user: Any, registry: Any, store: Any, poll: Any
) -> None:
    alice = make_user("operator")
    dev = await registry.add(alice)
    rec = await receiver_factory(fail_first=1000)
    app = await app_factory(webhook_max_attempts=3, kafka_enabled=False)
    c = app.client
    sub = (
        await c.post("/monitoring/subscriptions", json={"url": rec.url}, headers=alice.headers)
    ).json()
    await app.app.state.webhooks.enqueue([make_alert(dev, alice.id)])

    async def failed() -> list[dict[str, Any]]:
        r = await c.get(
            f"/monitoring/subscriptions/{sub['id']}/deliveries",
            params={"status": "failed"},
            headers=alice.headers,
        )
        return r.json()  # type: ignore[no-any-return]

    items = await poll(failed, timeout=20)
    assert items[0]["attempts"] == 3 and items[0]["last_error"] == "HTTP 503"
    assert len(rec.calls) == 3
    at = [call["at"] for call in rec.calls]
    assert at[0] < at[1] < at[2]


async def test_pending_deliveries_survive_a_restart(
    app_factory: Any, receiver_factory: Any, make_user: Any, registry: Any, poll: Any
) -> None:
    alice = make_user("operator")
    dev = await registry.add(alice)
    rec = await receiver_factory(fail_first=0)
    # The first instance stores the delivery but is gone before sending it ...
    first = await app_factory(webhook_enabled=False, kafka_enabled=False)
    sub = (
        await first.client.post(
            "/monitoring/subscriptions", json={"url": rec.url}, headers=alice.headers
        )
    ).json()
    alert = make_alert(dev, alice.id)
    assert await first.app.state.webhooks.enqueue([alert]) == 1
    assert await first.app.state.webhooks.enqueue([alert]) == 1  # replay: same delivery id
    await asyncio.sleep(0.3)
    assert rec.calls == []
    # ... the next one (sharing only the store) delivers it, once.
    await app_factory(kafka_enabled=False)
    await poll(lambda: rec.calls, timeout=20)
    await asyncio.sleep(0.5)
    assert len(rec.calls) == 1
    assert json.loads(rec.calls[0]["body"])["alert"]["alert_id"] == alert.alert_id
    assert rec.calls[0]["headers"]["x-iot-event"] == "alert.active"
    assert sub["id"] == json.loads(rec.calls[0]["body"])["subscription_id"]


async def test_subscription_crud_and_validation(
    app_factory: Any, make_user: Any, registry: Any
) -> None:
    alice, bob, admin = make_user("operator"), make_user("operator"), make_user("admin")
    dev_a, dev_b = await registry.add(alice), await registry.add(bob)
    c = (await app_factory(kafka_enabled=False)).client
    r = await c.post(
        "/monitoring/subscriptions",
        json={
            "url": "https://hooks.example.com/x",
            "device_ids": [dev_a],
            "rule_types": ["threshold"],
            "min_severity": "critical",
        },
        headers=alice.headers,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert len(created["secret"]) >= 32
    bad = [
        {"url": "not a url"},
        {"url": "ftp://example.com/x"},
        {"url": "https://example.com", "min_severity": "loud"},
        {"url": "https://example.com", "device_ids": ["nope"]},
        {"url": "https://example.com", "extra": 1},
        {"url": "https://example.com", "secret": "short"},
    ]
    for body in bad:
        r = await c.post("/monitoring/subscriptions", json=body, headers=alice.headers)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "validation_error"
    r = await c.post(
        "/monitoring/subscriptions",
        json={"url": "https://example.com", "device_ids": [dev_b]},
        headers=alice.headers,
    )
    assert r.status_code == 404

    mine = (await c.get("/monitoring/subscriptions", headers=alice.headers)).json()
    assert [s["id"] for s in mine] == [created["id"]]
    assert "secret" not in mine[0] and mine[0]["device_ids"] == [dev_a]
    assert (await c.get("/monitoring/subscriptions", headers=bob.headers)).json() == []
    r = await c.delete(f"/monitoring/subscriptions/{created['id']}", headers=bob.headers)
    assert r.status_code == 404
    assert any(
        s["id"] == created["id"]
        for s in (await c.get("/monitoring/subscriptions", headers=admin.headers)).json()
    )
    r = await c.delete(f"/monitoring/subscriptions/{created['id']}", headers=alice.headers)
    assert r.status_code == 204
    r = await c.get(f"/monitoring/subscriptions/{created['id']}", headers=alice.headers)
    assert r.status_code == 404
