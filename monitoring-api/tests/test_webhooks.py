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

import asyncpg
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from iot_common.events import Alert, json_encoder
from iotctl.broker import free_port
from monitoring_api.egress import EgressPolicy, SystemResolver
from monitoring_api.webhooks import WebhookDispatcher, WebhookSender, verify_signature
from monitoring_store.base import Subscription


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


async def produce(kafka_bootstrap: str, topic: str, alerts: list[Alert]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await p.start()
    try:
        for a in alerts:
            await p.send_and_wait(topic, json_encoder.encode(a), key=a.device_id.encode())
    finally:
        await p.stop()


async def test_retries_until_delivered_with_signature_and_idempotency_key(
    new_alert: Any,
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

    hot = new_alert(dev_a, alice.id, "critical")
    await store.upsert_alerts([hot])
    await produce(
        kafka_bootstrap,
        f"{topic_prefix}alerts",
        [hot, new_alert(dev_a, alice.id, "info"), new_alert(dev_b, bob.id, "critical")],
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
    new_alert: Any,
    app_factory: Any,
    receiver_factory: Any,
    make_user: Any,
    registry: Any,
    store: Any,
    poll: Any,
) -> None:
    alice = make_user("operator")
    dev = await registry.add(alice)
    rec = await receiver_factory(fail_first=1000)
    app = await app_factory(webhook_max_attempts=3, kafka_enabled=False)
    c = app.client
    sub = (
        await c.post("/monitoring/subscriptions", json={"url": rec.url}, headers=alice.headers)
    ).json()
    await app.app.state.webhooks.enqueue([new_alert(dev, alice.id)])

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
    new_alert: Any,
    app_factory: Any,
    receiver_factory: Any,
    make_user: Any,
    registry: Any,
    poll: Any,
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
    alert = new_alert(dev, alice.id)
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
    app_factory: Any, make_user: Any, registry: Any, dns: dict[str, list[str]]
) -> None:
    alice, bob, admin = make_user("operator"), make_user("operator"), make_user("admin")
    dev_a, dev_b = await registry.add(alice), await registry.add(bob)
    # Public names, as far as the app can tell; nothing is ever delivered in this test.
    dns.update({"hooks.example.com": ["93.184.215.14"], "example.com": ["93.184.215.14"]})
    c = (await app_factory(kafka_enabled=False, webhook_enabled=False)).client
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


@contextlib.asynccontextmanager
async def deliveries_unwritable(store_url: str) -> AsyncIterator[None]:
    """A store outage for webhook deliveries: the table they are written to is gone (MongoDB:
    the collection refuses every document)."""
    if store_url.startswith("mongodb"):
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store_url)
        db = client.get_default_database()
        try:
            await db.command("collMod", "deliveries", validator={"$expr": False})
            try:
                yield
            finally:
                await db.command("collMod", "deliveries", validator={})
        finally:
            await client.close()
        return
    assert store_url.startswith("postgresql"), "add this backend's outage here"
    conn = await asyncpg.connect(store_url)
    try:
        await conn.execute("ALTER TABLE monitoring_deliveries RENAME TO monitoring_deliveries_away")
        try:
            yield
        finally:
            await conn.execute(
                "ALTER TABLE monitoring_deliveries_away RENAME TO monitoring_deliveries"
            )
    finally:
        await conn.close()


async def enqueue_failures(client: Any) -> float:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "monitoring_api_webhook_enqueue_failures":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return 0.0


async def test_a_store_outage_while_enqueueing_loses_no_delivery(
    new_alert: Any,
    app_factory: Any,
    receiver_factory: Any,
    make_user: Any,
    registry: Any,
    store_url: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    poll: Any,
) -> None:
    alice = make_user("operator")
    dev = await registry.add(alice)
    rec = await receiver_factory(fail_first=0)
    app = await app_factory()
    c = app.client
    r = await c.post("/monitoring/subscriptions", json={"url": rec.url}, headers=alice.headers)
    assert r.status_code == 201, r.text
    sent = [new_alert(dev, alice.id) for _ in range(3)]
    async with deliveries_unwritable(store_url):
        before = await enqueue_failures(c)
        await produce(kafka_bootstrap, f"{topic_prefix}alerts", sent[:2])
        # Longer than any give-up-after-N-tries: the outage outlasts six failed attempts.
        await poll(lambda: _more_than(c, before, 6), timeout=30)
        await produce(kafka_bootstrap, f"{topic_prefix}alerts", sent[2:])
        await asyncio.sleep(0.5)
        assert rec.calls == []
    await poll(lambda: len(rec.calls) >= 3, timeout=30)
    await asyncio.sleep(0.5)
    delivered = [json.loads(call["body"])["alert"]["alert_id"] for call in rec.calls]
    assert sorted(delivered) == sorted(a.alert_id for a in sent)  # each, once


async def _more_than(client: Any, before: float, n: int) -> bool:
    return await enqueue_failures(client) - before >= n


class _Idle:
    """The real store, reporting each time the delivery worker has finished a polling round."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.polled = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def due_deliveries(self, **kwargs: Any) -> Any:
        self.polled.set()
        return []  # nothing else of the shared store is claimed by this test's worker


async def test_an_alert_arriving_as_the_api_stops_does_not_keep_it_from_stopping(
    new_alert: Any, store: Any, make_user: Any
) -> None:
    """The Kafka consumer hands an alert to the webhooks just as shutdown begins: the
    worker, woken by it, must still stop (it used to go on polling, so the API never
    finished its shutdown); the delivery stays pending for the next start."""
    alice = make_user("operator")
    sub = Subscription(
        id=str(uuid.uuid4()),
        owner_id=alice.id,
        url=f"http://127.0.0.1:{free_port()}/hook",
        secret="s",
        device_ids=None,
        min_severity="info",
        rule_types=None,
        created_at=time.time(),
    )
    await store.create_subscription(sub)
    idle = _Idle(store)
    policy = EgressPolicy.from_setting(["127.0.0.0/8"])
    dispatcher = WebhookDispatcher(
        store=idle,
        sender=WebhookSender(
            policy=policy, resolver=SystemResolver(), deadline=5, max_response_bytes=1024
        ),
        poll_interval=60,
    )
    dispatcher.start()
    try:
        await asyncio.wait_for(idle.polled.wait(), 15)
        await dispatcher.enqueue([new_alert("dev-1", alice.id)])
        closing = asyncio.ensure_future(dispatcher.close())
        # It used to never return; the 15 s only turn that hang into a failure.
        await asyncio.wait({closing}, timeout=15)
        assert closing.done(), "the webhook worker did not stop"
        closing.result()
        (pending,) = await store.list_deliveries(subscription_id=sub.id)
        assert pending.status == "pending" and pending.attempts == 0
    finally:
        if dispatcher._task is not None and not dispatcher._task.done():
            dispatcher._task.cancel()  # what is left running of the old code
        await store.delete_subscription(sub.id, owner_id=None)


async def test_viewers_may_not_create_or_delete_subscriptions(
    app_factory: Any, make_user: Any, registry: Any, dns: dict[str, list[str]]
) -> None:
    """Self-registered users are read-only: no webhook of theirs makes the platform send
    requests out, and they cannot stop an operator's deliveries."""
    viewer, admin = make_user("viewer"), make_user("admin")
    await registry.add(viewer)
    dns.update({"hooks.example.com": ["93.184.215.14"]})
    c = (await app_factory(kafka_enabled=False, webhook_enabled=False)).client
    body = {"url": "https://hooks.example.com/x"}
    r = await c.post("/monitoring/subscriptions", json=body, headers=viewer.headers)
    assert r.status_code == 403, r.text
    assert (await c.get("/monitoring/subscriptions", headers=viewer.headers)).json() == []
    made = await c.post("/monitoring/subscriptions", json=body, headers=admin.headers)
    assert made.status_code == 201, made.text
    sub = made.json()["id"]
    r = await c.delete(f"/monitoring/subscriptions/{sub}", headers=viewer.headers)
    assert r.status_code == 403
    r = await c.get(f"/monitoring/subscriptions/{sub}", headers=admin.headers)
    assert r.status_code == 200
