"""Who may do what: tokens verified locally, revocation, owners, viewers, admins."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from iot_common.auth import publish_revocation


async def test_requests_without_valid_token_are_401(service: Any, make_user: Any) -> None:
    c = service.client
    assert (await c.get("/devices/")).status_code == 401
    r = await c.get("/devices/", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    expired = make_user("operator", ttl=-10)
    assert (await c.get("/devices/", headers=expired.headers)).status_code == 401
    # A token signed by a key the service does not trust.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    forged = jwt.encode(
        {
            "sub": "00000000-0000-4000-8000-000000000000",
            "role": "admin",
            "iat": now,
            "exp": now + 60,
            "jti": "x",
            "iss": "iot-signing",
            "aud": "iot-platform",
        },
        other,
        algorithm="RS256",
        headers={"kid": "test-key-1"},
    )
    r = await c.get("/devices/", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401


async def test_revoked_token_is_refused(
    service: Any, make_user: Any, redis: Any, device_body: Any
) -> None:
    dave = make_user("operator")
    c = service.client
    assert (await c.post("/devices/", json=device_body(), headers=dave.headers)).status_code == 201
    await publish_revocation(
        redis, namespace=service.settings.redis_namespace, jti=dave.jti, exp=dave.exp
    )
    deadline = time.monotonic() + 10
    status = 200
    while time.monotonic() < deadline:
        status = (await c.get("/devices/", headers=dave.headers)).status_code
        if status == 401:
            break
        await asyncio.sleep(0.05)
    assert status == 401
    # A fresh token of the same user still works.
    again = make_user("operator", user_id=dave.id)
    r = await c.get("/devices/", headers=again.headers)
    assert r.status_code == 200 and r.json()["total"] == 1


async def test_owners_see_only_their_devices(
    service: Any, users: dict[str, Any], device_body: Any
) -> None:
    alice, bob = users["alice"], users["bob"]
    c = service.client
    a_dev = (
        await c.post("/devices/", json=device_body("shared-name"), headers=alice.headers)
    ).json()
    # The same name is fine for another owner.
    r = await c.post("/devices/", json=device_body("shared-name"), headers=bob.headers)
    assert r.status_code == 201
    b_dev = r.json()

    path = f"/devices/{a_dev['id']}"
    for method, url, kwargs in [
        ("GET", path, {}),
        ("PUT", path, {"json": {"name": "stolen"}}),
        ("DELETE", path, {}),
        ("GET", f"{path}/status", {}),
        ("GET", f"{path}/events", {}),
        ("POST", f"{path}/events", {"json": {"event_type": "poke"}}),
        ("POST", f"{path}/credentials", {}),
    ]:
        r = await c.request(method, url, headers=bob.headers, **kwargs)
        assert r.status_code == 404, (method, url, r.status_code)
        assert r.json()["error"]["code"] == "not_found"

    listed = (await c.get("/devices/", headers=bob.headers)).json()
    assert [d["id"] for d in listed["items"]] == [b_dev["id"]]
    # Asking for alice's devices by owner_id gives bob nothing.
    r = await c.get("/devices/", params={"owner_id": alice.id}, headers=bob.headers)
    assert r.json()["total"] == 0
    # Nothing of alice's changed.
    got = (await c.get(path, headers=alice.headers)).json()
    assert got == {**a_dev, "status": got["status"]}
    assert got["name"] == "shared-name" and got["has_credentials"] is False
    events = (await c.get(f"{path}/events", headers=alice.headers)).json()
    assert [e["event_type"] for e in events["items"]] == ["device.created"]


async def test_viewers_read_only(
    service: Any, make_user: Any, users: dict[str, Any], device_body: Any
) -> None:
    c = service.client
    viewer = users["viewer"]
    assert (await c.get("/devices/", headers=viewer.headers)).status_code == 200
    r = await c.post("/devices/", json=device_body(), headers=viewer.headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    # A viewer's own device (created by an admin for them) is readable but not changeable.
    admin = users["admin"]
    r = await c.post("/devices/", json=device_body(owner_id=viewer.id), headers=admin.headers)
    assert r.status_code == 201
    dev = r.json()
    assert dev["owner_id"] == viewer.id
    assert (await c.get(f"/devices/{dev['id']}", headers=viewer.headers)).status_code == 200
    for method, url in [
        ("PUT", f"/devices/{dev['id']}"),
        ("DELETE", f"/devices/{dev['id']}"),
        ("POST", f"/devices/{dev['id']}/credentials"),
        ("POST", f"/devices/{dev['id']}/events"),
    ]:
        r = await c.request(method, url, headers=viewer.headers, json={"type": "x"})
        assert r.status_code == 403, (method, url)


async def test_admin_sees_and_manages_all(
    service: Any, users: dict[str, Any], device_body: Any
) -> None:
    c = service.client
    alice, admin = users["alice"], users["admin"]
    dev = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
    assert (await c.get(f"/devices/{dev['id']}", headers=admin.headers)).status_code == 200
    r = await c.get("/devices/", params={"owner_id": alice.id}, headers=admin.headers)
    assert [d["id"] for d in r.json()["items"]] == [dev["id"]]
    r = await c.put(f"/devices/{dev['id']}", json={"active": False}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["owner_id"] == alice.id


async def test_operator_cannot_create_for_someone_else(
    service: Any, users: dict[str, Any], device_body: Any
) -> None:
    alice, bob = users["alice"], users["bob"]
    r = await service.client.post(
        "/devices/", json=device_body(owner_id=bob.id), headers=alice.headers
    )
    assert r.status_code == 403
    assert (await service.client.get("/devices/", headers=bob.headers)).json()["total"] == 0
