"""The device API as a user sees it: register, read, change, delete, list."""

from __future__ import annotations

import uuid
from typing import Any


async def test_register_read_update_delete(
    service: Any, device_body: Any, users: dict[str, Any]
) -> None:
    alice = users["alice"]
    c = service.client
    r = await c.post("/devices/", json=device_body("boiler-1"), headers=alice.headers)
    assert r.status_code == 201, r.text
    dev = r.json()
    assert dev["name"] == "boiler-1"
    assert dev["owner_id"] == alice.id
    assert dev["status"] == "never_seen" and dev["last_seen"] is None
    assert dev["active"] is True and dev["config_version"] == 1
    assert dev["has_credentials"] is False
    assert dev["config"]["rules"][0]["severity"] == "critical"
    uuid.UUID(dev["id"])

    r = await c.get(f"/devices/{dev['id']}", headers=alice.headers)
    assert r.status_code == 200 and r.json() == dev

    r = await c.put(f"/devices/{dev['id']}", json={"active": False}, headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["active"] is False and r.json()["config_version"] == 1

    new_config = {"metrics": [{"name": "humidity", "unit": "%"}], "rules": []}
    r = await c.put(f"/devices/{dev['id']}", json={"config": new_config}, headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["config_version"] == 2
    assert r.json()["config"]["metrics"][0]["name"] == "humidity"
    assert r.json()["updated_at"] > dev["updated_at"]

    # The same config again is not a change.
    r = await c.put(f"/devices/{dev['id']}", json={"config": new_config}, headers=alice.headers)
    assert r.json()["config_version"] == 2

    r = await c.delete(f"/devices/{dev['id']}", headers=alice.headers)
    assert r.status_code == 204
    r = await c.get(f"/devices/{dev['id']}", headers=alice.headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_list_filters_and_pagination(service: Any, device_body: Any, make_user: Any) -> None:
    carol = make_user("operator")
    c = service.client
    for i in range(5):
        body = device_body(f"pump-{i}", type="pump" if i % 2 else "valve")
        assert (await c.post("/devices/", json=body, headers=carol.headers)).status_code == 201
    await c.post("/devices/", json=device_body("other_50%"), headers=carol.headers)

    r = await c.get("/devices/", headers=carol.headers)
    assert r.json()["total"] == 6

    r = await c.get("/devices/", params={"type": "pump"}, headers=carol.headers)
    assert [d["name"] for d in r.json()["items"]] == ["pump-1", "pump-3"]

    r = await c.get(
        "/devices/", params={"name_prefix": "pump-", "limit": 2, "offset": 2}, headers=carol.headers
    )
    body = r.json()
    assert body["total"] == 5 and [d["name"] for d in body["items"]] == ["pump-2", "pump-3"]

    # LIKE wildcards in the prefix are literal.
    r = await c.get("/devices/", params={"name_prefix": "other_5"}, headers=carol.headers)
    assert [d["name"] for d in r.json()["items"]] == ["other_50%"]
    r = await c.get("/devices/", params={"name_prefix": "%"}, headers=carol.headers)
    assert r.json()["total"] == 0


async def test_credentials_issued_once_and_rotated(
    service: Any, device_body: Any, users: dict[str, Any]
) -> None:
    alice = users["alice"]
    c = service.client
    dev = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
    r1 = await c.post(f"/devices/{dev['id']}/credentials", headers=alice.headers)
    assert r1.status_code == 201
    token1 = r1.json()["token"]
    assert len(token1) >= 40
    r2 = await c.post(f"/devices/{dev['id']}/credentials", headers=alice.headers)
    token2 = r2.json()["token"]
    assert token2 != token1
    got = (await c.get(f"/devices/{dev['id']}", headers=alice.headers)).json()
    assert got["has_credentials"] is True
    assert token2 not in str(got)


async def test_custom_events_history(service: Any, device_body: Any, users: dict[str, Any]) -> None:
    alice = users["alice"]
    c = service.client
    dev = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
    r = await c.post(
        f"/devices/{dev['id']}/events",
        json={"event_type": "door_opened", "payload": {"door": 2, "by": "maintenance"}},
        headers=alice.headers,
    )
    assert r.status_code == 201, r.text
    posted = r.json()
    assert posted["event_type"] == "device.event.door_opened"
    await c.put(f"/devices/{dev['id']}", json={"name": "renamed"}, headers=alice.headers)
    # What a client read back can be posted again as it is: the same field, the same type.
    again = {k: posted[k] for k in ("event_type", "payload")}
    r = await c.post(f"/devices/{dev['id']}/events", json=again, headers=alice.headers)
    assert r.status_code == 201, r.text
    assert r.json()["event_type"] == "device.event.door_opened"

    r = await c.get(f"/devices/{dev['id']}/events", headers=alice.headers)
    history = r.json()
    assert history["total"] == 4
    assert [e["event_type"] for e in history["items"]] == [
        "device.event.door_opened",
        "device.updated",
        "device.event.door_opened",
        "device.created",
    ]
    assert history["items"][2]["payload"] == {"door": 2, "by": "maintenance"}
    assert history["items"][0]["payload"] == history["items"][2]["payload"]
    assert history["items"][1]["payload"]["name"] == "renamed"

    r = await c.get(
        f"/devices/{dev['id']}/events",
        params={"event_type": "device.created"},
        headers=alice.headers,
    )
    assert r.json()["total"] == 1


async def test_health_and_metrics(service: Any) -> None:
    r = await service.client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["database"] == "up" and body["redis"] == "up"
    r = await service.client.get("/metrics")
    assert r.status_code == 200
    assert "http_requests_total" in r.text


async def test_collection_path_without_trailing_slash(
    service: Any, device_body: Any, users: dict[str, Any]
) -> None:
    alice = users["alice"]
    r = await service.client.post("/devices", json=device_body(), headers=alice.headers)
    assert r.status_code == 201
    r = await service.client.get("/devices", headers=alice.headers)
    assert r.status_code == 200 and r.json()["total"] == 1


async def test_event_type_field_and_its_deprecated_alias(
    service: Any, device_body: Any, users: dict[str, Any]
) -> None:
    alice = users["alice"]
    c = service.client
    dev = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
    url = f"/devices/{dev['id']}/events"
    # `type` still works (clients of the first version) and means the same.
    r = await c.post(url, json={"type": "door_opened"}, headers=alice.headers)
    assert r.status_code == 201, r.text
    assert r.json()["event_type"] == "device.event.door_opened"
    r = await c.post(
        url, json={"type": "poke", "event_type": "poke", "payload": {}}, headers=alice.headers
    )
    assert r.status_code == 201, r.text

    # Conflicting names, lifecycle types and nothing at all are refused, and nothing is stored.
    for body in (
        {"type": "poke", "event_type": "door_opened"},
        {"event_type": "device.created"},
        {"event_type": "device.event."},
        {"event_type": "Door Opened"},
        {"payload": {"door": 1}},
    ):
        r = await c.post(url, json=body, headers=alice.headers)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "validation_error", r.text
    history = (await c.get(url, headers=alice.headers)).json()
    assert [e["event_type"] for e in history["items"]] == [
        "device.event.poke",
        "device.event.door_opened",
        "device.created",
    ]

    # OpenAPI documents event_type, and type as deprecated.
    schema = (await c.get("/openapi.json")).json()["components"]["schemas"]["CustomEventCreate"]
    assert schema["required"] == ["event_type"]
    assert schema["properties"]["type"]["deprecated"] is True
    assert "deprecated" not in schema["properties"]["event_type"]
