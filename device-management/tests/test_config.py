"""Device configuration: the owner's settings, versions, what the device gets and reports."""

from __future__ import annotations

from typing import Any

INTERNAL = {"X-Internal-Token": "test-internal-token"}
SETTINGS = {"sample_interval_s": 15, "firmware": {"channel": "beta"}, "site": "boiler room"}


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


async def test_settings_are_stored_and_bounded(
    service: Any, device_body: Any, users: dict[str, Any]
) -> None:
    c, h = service.client, users["alice"].headers
    body = device_body()
    body["config"]["settings"] = SETTINGS
    dev = (await c.post("/devices/", json=body, headers=h)).json()
    assert dev["config"]["settings"] == SETTINGS
    assert dev["config_version"] == 1
    assert dev["config_status"] == {
        "desired_version": 1,
        "reported_version": None,
        "reported_at": None,
        "in_sync": False,
    }

    # 16 levels are fine (like an event payload), deeper or bigger is a 422 that says where.
    config = {**body["config"], "settings": {"a": _nested(15)}}
    r = await c.put(f"/devices/{dev['id']}", json={"config": config}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["config_version"] == 2
    for settings, words in (
        ({"a": _nested(16)}, "config.settings.a.k"),
        ({"blob": "x" * 17_000}, "config.settings exceeds 16384 bytes"),
        (["not", "an", "object"], "dictionary"),
        ({"bad": "nul\u0000"}, "config.settings.bad"),
    ):
        bad = {**body["config"], "settings": settings}
        r = await c.put(f"/devices/{dev['id']}", json={"config": bad}, headers=h)
        assert r.status_code == 422, r.text
        assert words in r.text, r.text
    got = (await c.get(f"/devices/{dev['id']}", headers=h)).json()
    assert got["config_version"] == 2
    assert got["config"]["settings"] == {"a": _nested(15)}

    # A device created without settings has an empty object, and saying so changes nothing.
    plain = (await c.post("/devices/", json=device_body(), headers=h)).json()
    assert plain["config"]["settings"] == {}
    same = {**plain["config"], "settings": {}}
    r = await c.put(f"/devices/{plain['id']}", json={"config": same}, headers=h)
    assert r.json()["config_version"] == 1


async def test_desired_config_with_etag_and_reported_version(
    service: Any, device_body: Any, users: dict[str, Any]
) -> None:
    c, h = service.client, users["alice"].headers
    body = device_body()
    body["config"]["settings"] = SETTINGS
    dev = (await c.post("/devices/", json=body, headers=h)).json()
    url = f"/internal/devices/{dev['id']}/config"

    r = await c.get(url, headers=INTERNAL)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"config-1"'
    desired = r.json()
    assert desired == {"device_id": dev["id"], "version": 1, "config": dev["config"]}
    for tag in ('"config-1"', 'W/"config-1"', '"config-0", "config-1"', "*"):
        r = await c.get(url, headers={**INTERNAL, "If-None-Match": tag})
        assert r.status_code == 304, tag
        assert r.content == b""
        assert r.headers["etag"] == '"config-1"'

    new = {**body["config"], "settings": {**SETTINGS, "sample_interval_s": 5}}
    await c.put(f"/devices/{dev['id']}", json={"config": new}, headers=h)
    r = await c.get(url, headers={**INTERNAL, "If-None-Match": '"config-1"'})
    assert r.status_code == 200
    assert r.headers["etag"] == '"config-2"'
    assert r.json()["version"] == 2
    assert r.json()["config"]["settings"]["sample_interval_s"] == 5

    # The device reports what it applied; the owner sees whether it matches.
    report = f"/internal/devices/{dev['id']}/config/reported"
    r = await c.put(report, json={"version": 1}, headers=INTERNAL)
    assert r.status_code == 200, r.text
    assert r.json()["reported_version"] == 1 and r.json()["in_sync"] is False
    status = (await c.get(f"/devices/{dev['id']}", headers=h)).json()["config_status"]
    assert status["desired_version"] == 2 and status["reported_version"] == 1
    assert status["in_sync"] is False and status["reported_at"] is not None
    r = await c.put(report, json={"version": 2}, headers=INTERNAL)
    assert r.json()["in_sync"] is True
    status = (await c.get(f"/devices/{dev['id']}", headers=h)).json()["config_status"]
    assert status["reported_version"] == 2 and status["in_sync"] is True

    # A version that does not exist, or no version, is refused and changes nothing.
    r = await c.put(report, json={"version": 3}, headers=INTERNAL)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "conflict"
    for bad in ({"version": 0}, {"version": "2"}, {}, {"version": 2, "extra": 1}):
        r = await c.put(report, json=bad, headers=INTERNAL)
        assert r.status_code == 422, (bad, r.text)
    status = (await c.get(f"/devices/{dev['id']}", headers=h)).json()["config_status"]
    assert status["reported_version"] == 2 and status["in_sync"] is True


async def test_config_endpoints_are_internal_only(
    service: Any, device_body: Any, users: dict[str, Any]
) -> None:
    c, alice = service.client, users["alice"]
    dev = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
    url = f"/internal/devices/{dev['id']}/config"
    for headers in ({}, {"X-Internal-Token": "wrong"}, alice.headers):
        assert (await c.get(url, headers=headers)).status_code == 401
        r = await c.put(f"{url}/reported", json={"version": 1}, headers=headers)
        assert r.status_code == 401
    status = (await c.get(f"/devices/{dev['id']}", headers=alice.headers)).json()
    assert status["config_status"]["reported_version"] is None
    for unknown in ("00000000-0000-4000-8000-000000000000", "not-a-uuid"):
        r = await c.get(f"/internal/devices/{unknown}/config", headers=INTERNAL)
        assert r.status_code == 404
        r = await c.put(
            f"/internal/devices/{unknown}/config/reported", json={"version": 1}, headers=INTERNAL
        )
        assert r.status_code == 404
