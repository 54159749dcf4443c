"""Bad input is a clear 4xx in the common error shape, and changes nothing stored."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
async def owned(service: Any, users: dict[str, Any], device_body: Any) -> dict[str, Any]:
    r = await service.client.post(
        "/devices/", json=device_body("original"), headers=users["alice"].headers
    )
    assert r.status_code == 201
    return dict(r.json())


def fields(response: Any) -> list[str]:
    return [d["field"] for d in response.json()["error"].get("details", [])]


async def test_invalid_config_names_the_field(
    service: Any, users: dict[str, Any], device_body: Any
) -> None:
    c, h = service.client, users["alice"].headers
    body = device_body()
    body["config"]["rules"][0]["consecutive_windows"] = 0
    r = await c.post("/devices/", json=body, headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error"
    assert any(f.endswith("rules.0.threshold.consecutive_windows") for f in fields(r)), fields(r)

    body = device_body()
    body["config"]["metrics"][0]["name"] = "has space"
    r = await c.post("/devices/", json=body, headers=h)
    assert r.status_code == 422
    assert any(f.startswith("body.config.metrics.0.name") for f in fields(r)), fields(r)

    body = device_body()
    body["config"]["rules"][0]["severity"] = "apocalyptic"
    r = await c.post("/devices/", json=body, headers=h)
    assert r.status_code == 422 and any("severity" in f for f in fields(r))

    body = device_body()
    body["config"]["metrics"].append({"name": "temperature"})
    r = await c.post("/devices/", json=body, headers=h)
    assert r.status_code == 422 and "unique" in r.text

    # NaN is not JSON a database can hold: refused with the field named, not a 500.
    raw = (
        b'{"name":"nan-dev","type":"t","config":{"rules":[{"type":"threshold","id":"r",'
        b'"metric":"m","op":"above","value":NaN}]}}'
    )
    r = await c.post("/devices/", content=raw, headers={**h, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "config.rules.0.value" in r.text
    assert (await c.get("/devices/", headers=h)).json()["total"] == 0


async def test_size_limits(service: Any, users: dict[str, Any], device_body: Any) -> None:
    c, h = service.client, users["alice"].headers
    r = await c.post("/devices/", json=device_body("x" * 129), headers=h)
    assert r.status_code == 422 and fields(r) == ["body.name"]
    assert (await c.post("/devices/", json=device_body("x" * 128), headers=h)).status_code == 201
    r = await c.post("/devices/", json=device_body(type="t" * 65), headers=h)
    assert r.status_code == 422
    body = device_body()
    body["config"]["metrics"] = [{"name": f"m{i}"} for i in range(65)]
    r = await c.post("/devices/", json=body, headers=h)
    assert r.status_code == 422 and any(f.endswith("config.metrics") for f in fields(r))

    big = {"name": "big", "type": "t", "config": {}, "pad": "x" * (300 * 1024)}
    r = await c.post("/devices/", json=big, headers=h)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"

    dev = (await c.post("/devices/", json=device_body(), headers=h)).json()
    r = await c.post(
        f"/devices/{dev['id']}/events",
        json={"event_type": "blob", "payload": {"data": "y" * 20_000}},
        headers=h,
    )
    assert r.status_code == 422 and "payload" in r.text


async def test_malformed_ids_and_unknown_ids(service: Any, users: dict[str, Any]) -> None:
    c, h = service.client, users["alice"].headers
    for path in ["/devices/not-a-uuid", "/devices/123", "/devices/not-a-uuid/status"]:
        r = await c.get(path, headers=h)
        assert r.status_code == 422, path
        assert fields(r) == ["path.device_id"]
    r = await c.get("/devices/00000000-0000-4000-8000-000000000000", headers=h)
    assert r.status_code == 404
    r = await c.delete("/devices/00000000-0000-4000-8000-000000000000", headers=h)
    assert r.status_code == 404


async def test_wrong_types_and_malformed_json(
    service: Any, users: dict[str, Any], device_body: Any
) -> None:
    c, h = service.client, users["alice"].headers
    r = await c.post("/devices/", json=device_body(name=12), headers=h)
    assert r.status_code == 422
    r = await c.post("/devices/", json=device_body(active="maybe"), headers=h)
    assert r.status_code == 422
    r = await c.post("/devices/", json=device_body(unexpected=1), headers=h)
    assert r.status_code == 422
    r = await c.post("/devices/", json=["not", "an", "object"], headers=h)
    assert r.status_code == 422
    r = await c.post(
        "/devices/", content=b'{"name": ', headers={**h, "content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    r = await c.post(
        "/devices/", content=b"[" * 50_000, headers={**h, "content-type": "application/json"}
    )
    assert 400 <= r.status_code < 500
    r = await c.post("/devices/", json=device_body(name="bad\x00name"), headers=h)
    assert r.status_code == 422
    r = await c.get("/devices/", params={"name_prefix": "a\x00"}, headers=h)
    assert r.status_code == 422
    r = await c.get("/devices/", params={"limit": 0}, headers=h)
    assert r.status_code == 422
    r = await c.get("/devices/", params={"limit": "lots"}, headers=h)
    assert r.status_code == 422


async def test_rejected_changes_leave_the_device_untouched(
    service: Any, users: dict[str, Any], owned: dict[str, Any], device_body: Any
) -> None:
    c, h = service.client, users["alice"].headers
    other = (await c.post("/devices/", json=device_body("taken"), headers=h)).json()
    r = await c.post("/devices/", json=device_body("taken"), headers=h)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    # Names are compared after trimming whitespace.
    r = await c.post("/devices/", json=device_body("  taken "), headers=h)
    assert r.status_code == 409

    url = f"/devices/{owned['id']}"
    bad_updates = [
        {"name": "taken"},  # duplicate: 409
        {"name": "taken", "config": {"metrics": [{"name": "new"}]}},  # 409, config not applied
        {"config": {"metrics": [{"name": "ok"}], "rules": [{"type": "bogus"}]}},  # 422
        {"active": "nope"},
        {"name": ""},
        {"owner_id": users["bob"].id},
    ]
    for update in bad_updates:
        r = await c.put(url, json=update, headers=h)
        assert r.status_code in (409, 422), (update, r.status_code)
        assert set(r.json()) == {"error"}
    got = (await c.get(url, headers=h)).json()
    assert got == {**owned, "status": got["status"]}
    events = (await c.get(f"{url}/events", headers=h)).json()
    assert [e["event_type"] for e in events["items"]] == ["device.created"]
    assert (await c.get(f"/devices/{other['id']}", headers=h)).json()["name"] == "taken"
