"""The dashboard's device page: one's own devices, shown and changed through this API, and
device-management's refusals and outages as the dashboard sees them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from iot_common.errors import Conflict, ServiceUnavailable, ValidationFailed
from monitoring_api.devices import HttpDeviceDirectory

#: The store plays no part here.
ON_POSTGRES = pytest.mark.parametrize("store_url", ["postgres"], indirect=True)


@ON_POSTGRES
async def test_an_owner_sees_and_changes_their_device_and_nobody_elses(
    app_factory: Any, registry: Any, make_user: Any
) -> None:
    alice, bob = make_user("operator"), make_user("operator")
    dev = await registry.add(alice, name="greenhouse", metrics=["temp"])
    c = (await app_factory(kafka_enabled=False)).client

    listed = await c.get("/monitoring/devices", headers=alice.headers)
    assert listed.status_code == 200, listed.text
    assert [(d["id"], d["name"]) for d in listed.json()] == [(dev, "greenhouse")]
    assert (await c.get("/monitoring/devices", headers=bob.headers)).json() == []

    one = await c.get(f"/monitoring/devices/{dev}", headers=alice.headers)
    assert one.status_code == 200, one.text
    assert one.json()["name"] == "greenhouse" and one.json()["config_version"] == 1
    assert (await c.get(f"/monitoring/devices/{dev}", headers=bob.headers)).status_code == 404

    # device-management's refusal comes back as it gave it: a 422 naming the field
    bad_rule = {"metrics": [{"name": "temp"}], "rules": [{"type": "no-such-rule"}]}
    r = await c.put(f"/monitoring/devices/{dev}/config", json=bad_rule, headers=alice.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert any("rules" in d["field"] for d in r.json()["error"]["details"])

    config = {"metrics": [{"name": "temp"}, {"name": "hum"}], "rules": []}
    r = await c.put(f"/monitoring/devices/{dev}/config", json=config, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["config_version"] == 2
    # shown at once, not after the device cache's lifetime
    assert (await c.get(f"/monitoring/devices/{dev}", headers=alice.headers)).json()[
        "config_version"
    ] == 2
    r = await c.put(f"/monitoring/devices/{dev}/config", json=config, headers=bob.headers)
    assert r.status_code == 404

    assert not one.json()["has_credentials"]
    r = await c.post(f"/monitoring/devices/{dev}/credentials", headers=alice.headers)
    assert r.status_code == 201, r.text
    assert r.json()["token"] and r.json()["device_id"] == dev
    shown = (await c.get(f"/monitoring/devices/{dev}", headers=alice.headers)).json()
    assert shown["has_credentials"] is True
    r = await c.post(f"/monitoring/devices/{dev}/credentials", headers=bob.headers)
    assert r.status_code == 404


def _directory(answer: Any) -> HttpDeviceDirectory:
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(answer), base_url="http://device-management"
    )
    return HttpDeviceDirectory("http://device-management", internal_token="t", http=http)


async def test_device_management_failing_is_unavailable_and_its_refusals_keep_their_kind() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ServiceUnavailable, match="unreachable"):
        await _directory(unreachable).change_device("tok", "d1", method="PUT", body={})
    broken = _directory(lambda r: httpx.Response(500, text="Internal Server Error"))
    with pytest.raises(ServiceUnavailable, match="did not answer"):
        await broken.change_device("tok", "d1", method="PUT", body={})

    conflict = {"error": {"code": "conflict", "message": "config changed meanwhile"}}
    with pytest.raises(Conflict, match="config changed meanwhile"):
        await _directory(lambda r: httpx.Response(409, json=conflict)).change_device(
            "tok", "d1", method="PUT", body={}
        )
    # a refusal without the platform's error shape still says who refused
    not_ours = _directory(lambda r: httpx.Response(422, text="<html>no</html>"))
    with pytest.raises(ValidationFailed, match="refused by device-management"):
        await not_ours.change_device("tok", "d1", method="POST", path="/credentials")
