"""Why was my reading refused: the owner sees their devices' refused readings, nobody else's."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from iot_common.telemetry import DeadLetter
from monitoring_store.base import deadletter_record


def refused(i: int, device: str, reason: str, payload: bytes, at: float) -> Any:
    dl = DeadLetter(
        reason=reason, source="mqtt", payload=payload, ts=at, device_id=device, detail=reason
    )
    return deadletter_record(dl, id=f"test/0/{device}/{i}")


async def test_owner_sees_refused_readings_with_reason_and_counts(
    app_factory: Any, make_user: Any, registry: Any, store: Any
) -> None:
    alice, bob = make_user("operator"), make_user("operator")
    dev_a, dev_b = await registry.add(alice), await registry.add(bob)
    now = time.time()
    await store.insert_deadletters(
        [
            refused(0, dev_a, "not_json", b"temp=21", now - 30),
            refused(1, dev_a, "non_finite", b'{"ts": 1, "metrics": {"t": 1e999}}', now - 20),
            refused(2, dev_a, "non_finite", b"x" * 5000, now - 10),
            refused(3, dev_b, "too_old", b"{}", now - 5),
        ]
    )
    c = (await app_factory(kafka_enabled=False)).client

    r = await c.get("/monitoring/deadletters", params={"device_id": dev_a}, headers=alice.headers)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["reason"] for i in items] == ["non_finite", "non_finite", "not_json"]
    assert items[0]["payload"] == "x" * 1024 and items[0]["payload_truncated"] is True
    assert items[2]["payload"] == "temp=21" and items[2]["source"] == "mqtt"
    assert r.json()["next_cursor"] is None

    # paged, newest first: exact positions, no record repeated or skipped at a page boundary
    page = (
        await c.get(
            "/monitoring/deadletters",
            params={"device_id": dev_a, "limit": 2},
            headers=alice.headers,
        )
    ).json()
    assert [i["id"] for i in page["items"]] == [items[0]["id"], items[1]["id"]]
    rest = (
        await c.get(
            "/monitoring/deadletters",
            params={"device_id": dev_a, "cursor": page["next_cursor"]},
            headers=alice.headers,
        )
    ).json()
    assert [i["id"] for i in rest["items"]] == [items[2]["id"]]
    assert rest["next_cursor"] is None
    # `before` is a time filter: an exact epoch bound excludes the message refused at it
    older = (
        await c.get(
            "/monitoring/deadletters",
            params={"device_id": dev_a, "before": repr(items[1]["ts"])},
            headers=alice.headers,
        )
    ).json()
    assert [i["id"] for i in older["items"]] == [items[2]["id"]]
    # … and so is an ISO 8601 instant (between the two oldest messages here)
    between = datetime.fromtimestamp((items[1]["ts"] + items[2]["ts"]) / 2, UTC).isoformat()
    older_iso = (
        await c.get(
            "/monitoring/deadletters",
            params={"device_id": dev_a, "before": between},
            headers=alice.headers,
        )
    ).json()
    assert [i["id"] for i in older_iso["items"]] == [items[2]["id"]]
    # one reason only
    non_finite = (
        await c.get(
            "/monitoring/deadletters",
            params={"device_id": dev_a, "reason": "non_finite"},
            headers=alice.headers,
        )
    ).json()
    assert [i["id"] for i in non_finite["items"]] == [items[0]["id"], items[1]["id"]]
    bad = await c.get(
        "/monitoring/deadletters",
        params={"device_id": dev_a, "cursor": "bm90IGEgY3Vyc29y"},
        headers=alice.headers,
    )
    assert bad.status_code == 422

    # owner-scoped: no device filter = only one's own; another's device is 404 and shows nothing
    mine = (await c.get("/monitoring/deadletters", headers=alice.headers)).json()["items"]
    assert {i["device_id"] for i in mine} == {dev_a}
    r = await c.get("/monitoring/deadletters", params={"device_id": dev_b}, headers=alice.headers)
    assert r.status_code == 404
    assert dev_b not in r.text
    r = await c.get(
        "/monitoring/deadletters", params={"device_id": "not-a-uuid"}, headers=alice.headers
    )
    assert r.status_code == 422
    assert (await c.get("/monitoring/deadletters")).status_code == 401

    stats = (await c.get("/monitoring/stats", headers=alice.headers)).json()
    assert stats["deadletters_by_reason"] == {"non_finite": 2, "not_json": 1}
    stats = (await c.get("/monitoring/stats", headers=bob.headers)).json()
    assert stats["deadletters_by_reason"] == {"too_old": 1}


async def test_a_batch_refused_at_one_instant_pages_without_skipping(
    app_factory: Any, make_user: Any, registry: Any, store: Any
) -> None:
    """Messages of one refused batch share a timestamp: page by page, each shows exactly once."""
    alice = make_user("operator")
    dev = await registry.add(alice)
    now = time.time()
    await store.insert_deadletters(
        [refused(i, dev, "not_json", b"x", now - 1 if i < 5 else now - 2) for i in range(7)]
    )
    c = (await app_factory(kafka_enabled=False)).client
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"device_id": dev, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await c.get("/monitoring/deadletters", params=params, headers=alice.headers)).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 and len(set(seen)) == 7
