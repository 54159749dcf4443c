"""The ingest path's view: Redis cache entries, the internal lookup, and derived status."""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import datetime
from typing import Any

from device_management.models import Device
from iot_common import redis_keys

INTERNAL = {"X-Internal-Token": "test-internal-token"}


async def cached(redis: Any, ns: str, device_id: str) -> dict[str, str]:
    raw = await redis.hgetall(redis_keys.device_cache(ns, device_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_cache_written_on_every_change(
    service: Any, users: dict[str, Any], redis: Any, device_body: Any
) -> None:
    c, alice, ns = service.client, users["alice"], service.settings.redis_namespace
    dev = (await c.post("/devices/", json=device_body(type="meter"), headers=alice.headers)).json()
    entry = await cached(redis, ns, dev["id"])
    assert entry["exists"] == "1" and entry["active"] == "1"
    assert entry["owner_id"] == alice.id and entry["token_hash"] == ""
    assert entry["config_version"] == "1" and entry["type"] == "meter"
    assert await redis.ttl(redis_keys.device_cache(ns, dev["id"])) > 0

    token = (await c.post(f"/devices/{dev['id']}/credentials", headers=alice.headers)).json()[
        "token"
    ]
    entry = await cached(redis, ns, dev["id"])
    assert entry["token_hash"] == hashlib.sha256(token.encode()).hexdigest()

    await c.put(
        f"/devices/{dev['id']}",
        json={"active": False, "config": {"metrics": [{"name": "kwh"}]}},
        headers=alice.headers,
    )
    entry = await cached(redis, ns, dev["id"])
    assert entry["active"] == "0" and entry["config_version"] == "2"

    await c.delete(f"/devices/{dev['id']}", headers=alice.headers)
    entry = await cached(redis, ns, dev["id"])
    assert entry["exists"] == "0"
    assert 0 < await redis.ttl(redis_keys.device_cache(ns, dev["id"])) <= 30


async def test_internal_lookup_fills_cache_on_miss(
    service: Any, users: dict[str, Any], redis: Any, device_body: Any
) -> None:
    c, alice, ns = service.client, users["alice"], service.settings.redis_namespace
    dev = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
    token = (await c.post(f"/devices/{dev['id']}/credentials", headers=alice.headers)).json()[
        "token"
    ]
    await redis.delete(redis_keys.device_cache(ns, dev["id"]))

    r = await c.get(f"/internal/devices/{dev['id']}", headers=INTERNAL)
    assert r.status_code == 200
    assert r.json() == {
        "id": dev["id"],
        "active": True,
        "owner_id": alice.id,
        "token_hash": hashlib.sha256(token.encode()).hexdigest(),
        "config_version": 1,
        "type": "thermometer",
    }
    assert (await cached(redis, ns, dev["id"]))["exists"] == "1"

    # A user's GET is a lookup too: it refills a dropped entry.
    await redis.delete(redis_keys.device_cache(ns, dev["id"]))
    await c.get(f"/devices/{dev['id']}", headers=alice.headers)
    assert (await cached(redis, ns, dev["id"]))["token_hash"] != ""

    unknown = "11111111-1111-4111-8111-111111111111"
    r = await c.get(f"/internal/devices/{unknown}", headers=INTERNAL)
    assert r.status_code == 404
    assert (await cached(redis, ns, unknown))["exists"] == "0"

    # Whatever id a device claims, a non-device is a 404 for the ingest path.
    for junk in ["sensor-1", "not-a-uuid", "1234"]:
        r = await c.get(f"/internal/devices/{junk}", headers=INTERNAL)
        assert r.status_code == 404, junk
        assert await redis.exists(redis_keys.device_cache(ns, junk)) == 0

    assert (await c.get(f"/internal/devices/{dev['id']}")).status_code == 401
    r = await c.get(f"/internal/devices/{dev['id']}", headers={"X-Internal-Token": "wrong"})
    assert r.status_code == 401
    # A user token is not an internal token.
    r = await c.get(f"/internal/devices/{dev['id']}", headers=alice.headers)
    assert r.status_code == 401


async def test_stale_lookup_cannot_overwrite_a_newer_change(
    service: Any, users: dict[str, Any], redis: Any, device_body: Any
) -> None:
    """A lookup that read the database before a change must not undo the change's entry."""
    c, alice, ns = service.client, users["alice"], service.settings.redis_namespace
    dev = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
    maker = service.app.state.sessionmaker
    async with maker() as session:
        stale = await session.get(Device, uuid.UUID(dev["id"]))
    await c.put(f"/devices/{dev['id']}", json={"active": False}, headers=alice.headers)
    await service.app.state.cache.store(stale)  # late write of the old state
    assert (await cached(redis, ns, dev["id"]))["active"] == "0"


async def test_status_from_last_seen(
    start_service: Any, users: dict[str, Any], redis: Any, device_body: Any
) -> None:
    service = await start_service(offline_after_seconds=30)
    c, alice, ns = service.client, users["alice"], service.settings.redis_namespace
    devs = [
        (await c.post("/devices/", json=device_body(f"st-{i}"), headers=alice.headers)).json()
        for i in range(3)
    ]
    now = time.time()
    await redis.hset(
        redis_keys.last_seen(ns),
        mapping={devs[0]["id"]: f"{now - 1:.3f}", devs[1]["id"]: f"{now - 120:.3f}"},
    )
    r = await c.get(f"/devices/{devs[0]['id']}/status", headers=alice.headers)
    body = r.json()
    assert body["status"] == "online" and body["offline_after_seconds"] == 30
    assert abs(datetime.fromisoformat(body["last_seen"]).timestamp() - (now - 1)) < 0.01
    assert (await c.get(f"/devices/{devs[1]['id']}/status", headers=alice.headers)).json()[
        "status"
    ] == "offline"
    got = (await c.get(f"/devices/{devs[2]['id']}", headers=alice.headers)).json()
    assert got["status"] == "never_seen" and got["last_seen"] is None

    for status, expected in [("online", 0), ("offline", 1), ("never_seen", 2)]:
        r = await c.get("/devices/", params={"status": status}, headers=alice.headers)
        assert [d["id"] for d in r.json()["items"]] == [devs[expected]["id"]], status
        assert r.json()["total"] == 1


async def test_health_reports_redis_down(
    start_service: Any, users: dict[str, Any], device_body: Any
) -> None:
    service = await start_service(redis_url="redis://127.0.0.1:1/0", relay_enabled=False)
    r = await service.client.get("/health")
    assert r.status_code == 503
    body = r.json()
    assert body["redis"] == "down" and body["database"] == "up"
    assert body["status"] == "unavailable" and body["rabbitmq"] == "disabled"
    # The registry itself still works; the cache entry simply is not written.
    r = await service.client.post("/devices/", json=device_body(), headers=users["alice"].headers)
    assert r.status_code == 201
    got = await service.client.get(f"/devices/{r.json()['id']}", headers=users["alice"].headers)
    assert got.status_code == 200 and got.json()["status"] == "never_seen"
