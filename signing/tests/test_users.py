"""Registration, login and listing through the HTTP API."""

from __future__ import annotations

import asyncpg
import pytest


def assert_error_shape(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == resp.headers["x-request-id"]
    if code:
        assert error["code"] == code
    return error


async def test_self_registration_creates_a_viewer_who_can_log_in(api):
    email = api.unique_email()
    resp = await api.register(email.upper(), "correct horse battery")
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "accepted"

    login = await api.login(email, "correct horse battery")  # stored lower-cased
    assert login.status_code == 200, login.text
    body = login.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    claims = await api.client.post("/users/verify-token", json={"token": body["access_token"]})
    assert claims.status_code == 200
    assert claims.json()["email"] == email
    assert claims.json()["role"] == "viewer"


@pytest.mark.parametrize("role", ["operator", "admin"])
async def test_only_admins_assign_roles(api, role):
    resp = await api.register(role=role)
    assert_error_shape(resp, 403, "forbidden")

    _, viewer_token = await api.user_token("viewer")
    resp = await api.client.post(
        "/users/add",
        json={"email": api.unique_email(), "password": "long enough pw", "role": role},
        headers=api.bearer(viewer_token),
    )
    assert_error_shape(resp, 403, "forbidden")

    admin = await api.admin_token()
    resp = await api.client.post(
        "/users/add",
        json={"email": api.unique_email(), "password": "long enough pw", "role": role},
        headers=api.bearer(admin),
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["role"] == role
    assert resp.json()["is_admin"] is (role == "admin")


async def test_registration_cannot_smuggle_admin_flag(api):
    resp = await api.register(is_admin=True)
    error = assert_error_shape(resp, 422, "validation_error")
    assert any(d["field"].endswith("is_admin") for d in error["details"])


async def test_an_admin_adding_a_duplicate_email_gets_a_conflict_whatever_its_case(api):
    admin = api.bearer(await api.admin_token())
    email = api.unique_email()
    body = {"email": email, "password": "long enough pw"}
    assert (await api.post("/users/add", body, headers=admin)).status_code == 201
    assert_error_shape(await api.post("/users/add", body, headers=admin), 409, "conflict")
    upper = {**body, "email": email.upper()}
    assert_error_shape(await api.post("/users/add", upper, headers=admin), 409, "conflict")


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "@example.com",
        "user@",
        "user@@example.com",
        "user example@example.com",
        "a" * 250 + "@example.com",
        "' OR '1'='1@example.com",
        "admin@example.com'; DROP TABLE t_users; --",
        "user@exa\x00mple.com",
        "\ud800@example.com",
        "",
    ],
)
async def test_invalid_emails_are_rejected(api, email):
    assert_error_shape(await api.register(email), 422, "validation_error")
    assert_error_shape(await api.login(email, "whatever password"), 422, "validation_error")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"email": "x@example.com"},
        {"password": "long enough password"},
        {"email": 123, "password": "long enough password"},
        {"email": "x@example.com", "password": 12345678},
        {"email": ["x@example.com"], "password": "long enough password"},
        {"email": "x@example.com", "password": None},
        {"email": "x@example.com", "password": "long enough password", "role": "superuser"},
        {"email": "x@example.com", "password": "long enough password", "role": 1},
        ["x@example.com", "long enough password"],
        "just a string",
        None,
    ],
)
async def test_missing_or_wrong_typed_fields_are_rejected(api, body):
    resp = await api.client.post("/users/add", json=body)
    error = assert_error_shape(resp, 422, "validation_error")
    assert error["details"]
    if isinstance(body, dict) and "role" not in body:
        resp = await api.client.post("/users/auth", json=body)
        assert_error_shape(resp, 422, "validation_error")


@pytest.mark.parametrize(
    "raw",
    [b'{"email": "x@example.com", "password": ', b"{'email': 1}", b"\xff\xfe\x00", b"{}}"],
)
@pytest.mark.parametrize("path", ["/users/add", "/users/auth", "/users/verify-token"])
async def test_malformed_json_is_a_bad_request(api, raw, path):
    resp = await api.client.post(path, content=raw, headers={"content-type": "application/json"})
    assert resp.status_code in (400, 422), resp.text
    assert_error_shape(resp, resp.status_code)
    if raw.startswith(b"{"):
        assert_error_shape(resp, 400, "bad_request")


@pytest.mark.parametrize("path", ["/users/add", "/users/auth", "/users/verify-token"])
async def test_bodies_over_64_kib_are_refused(api, path):
    big = {"email": "x@example.com", "password": "p" * (64 * 1024)}
    assert_error_shape(await api.client.post(path, json=big), 413, "payload_too_large")

    async def stream():  # no Content-Length: the limit must hold while reading, too
        yield b'{"email": "x@example.com", "password": "'
        for _ in range(70):
            yield b"p" * 1024
        yield b'"}'

    resp = await api.client.post(
        path, content=stream(), headers={"content-type": "application/json"}
    )
    assert_error_shape(resp, 413, "payload_too_large")


async def test_password_length_limits(serve):
    async with serve(password_min_length=10, password_max_length=20) as api:
        resp = await api.register(password="x" * 9)
        error = assert_error_shape(resp, 422, "validation_error")
        assert error["details"][0]["field"] == "body.password"
        assert "10 to 20" in error["details"][0]["message"]
        assert_error_shape(await api.register(password="x" * 21), 422, "validation_error")
        # Above the hard cap the schema itself refuses, before any hashing.
        assert_error_shape(await api.register(password="x" * 5000), 422, "validation_error")
        assert (await api.register(password="x" * 10)).status_code == 202
        assert (await api.register(password="x" * 20)).status_code == 202
        # A login with an over-long password is just wrong credentials (nothing is hashed).
        assert_error_shape(await api.login(api.admin_email, "x" * 21), 401, "unauthorized")
        assert_error_shape(await api.login(api.admin_email, "x" * 5000), 422, "validation_error")


async def test_injection_strings_are_inert(api):
    nasty = "'; DROP TABLE t_users; -- \" OR 1=1 /* ${jndi:x} {{7*7}} \x00"
    email = api.unique_email()
    assert (await api.register(email, nasty)).status_code == 202
    assert (await api.login(email, nasty)).status_code == 200
    assert_error_shape(await api.login(email, "' OR '1'='1"), 401, "unauthorized")
    # The table is still there and the admin still logs in.
    assert (await api.login(api.admin_email, api.admin_password)).status_code == 200


async def test_unicode_passwords_work(api):
    email = api.unique_email()
    password = "pässwörd-密码-🔑-\u0000-end"
    assert (await api.register(email, password)).status_code == 202
    assert (await api.login(email, password)).status_code == 200
    assert_error_shape(await api.register(password="\ud800 lone surrogate"), 422)


async def test_wrong_email_and_wrong_password_look_the_same(api):
    email = api.unique_email()
    assert (await api.register(email, "the right password")).status_code == 202
    wrong_password = assert_error_shape(await api.login(email, "the wrong password"), 401)
    unknown_email = assert_error_shape(
        await api.login(api.unique_email(), "the right password"), 401
    )
    for error in (wrong_password, unknown_email):
        error.pop("request_id")
    assert wrong_password == unknown_email
    assert wrong_password["message"] == "wrong email or password"


async def test_self_registration_can_be_switched_off(serve):
    async with serve(allow_self_registration=False) as api:
        assert_error_shape(await api.register(), 401, "unauthorized")
        _, viewer = await api.user_token("viewer")
        resp = await api.client.post(
            "/users/add",
            json={"email": api.unique_email(), "password": "long enough pw"},
            headers=api.bearer(viewer),
        )
        assert_error_shape(resp, 403, "forbidden")


async def test_admin_lists_users_page_by_page(api):
    admin = await api.admin_token()
    emails = {api.unique_email("listed") for _ in range(3)}
    for email in emails:
        assert (await api.register(email)).status_code == 202

    first = await api.client.get("/users/", params={"limit": 2}, headers=api.bearer(admin))
    assert first.status_code == 200, first.text
    page = first.json()
    assert page["limit"] == 2 and page["offset"] == 0 and len(page["items"]) == 2
    assert page["total"] >= 4

    seen: list[str] = []
    offset = 0
    while offset < page["total"]:
        resp = await api.client.get(
            "/users/", params={"limit": 2, "offset": offset}, headers=api.bearer(admin)
        )
        seen += [u["email"] for u in resp.json()["items"]]
        offset += 2
    assert len(seen) == len(set(seen)) == page["total"]
    assert emails <= set(seen)
    assert api.admin_email in seen
    assert "password_hash" not in first.text

    past_end = await api.client.get(
        "/users/", params={"offset": page["total"]}, headers=api.bearer(admin)
    )
    assert past_end.json()["items"] == []


async def test_listing_users_needs_an_admin_token(api):
    assert_error_shape(await api.client.get("/users/"), 401, "unauthorized")
    _, viewer = await api.user_token("viewer")
    _, operator = await api.user_token("operator")
    for token in (viewer, operator):
        assert_error_shape(
            await api.client.get("/users/", headers=api.bearer(token)), 403, "forbidden"
        )
    for header in ("Bearer", "Basic abc", "Bearer not.a.token", "token"):
        resp = await api.client.get("/users/", headers={"Authorization": header})
        assert_error_shape(resp, 401, "unauthorized")


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 501}, {"limit": "ten"}, {"offset": -1}, {"offset": "1e99"}],
)
async def test_bad_pagination_is_rejected(api, params):
    admin = await api.admin_token()
    resp = await api.client.get("/users/", params=params, headers=api.bearer(admin))
    assert_error_shape(resp, 422, "validation_error")


async def test_password_is_rehashed_when_argon2_parameters_change(serve, signing_db):
    password = "rehash me please"
    async with serve() as api:
        email = api.unique_email()
        assert (await api.register(email, password)).status_code == 202
    before = await _password_hash(signing_db, email)
    assert "m=1024,t=1,p=1" in before

    async with serve(argon2_memory_cost_kib=2048, argon2_time_cost=2) as api:
        assert (await api.login(email, password)).status_code == 200
        after = await _password_hash(signing_db, email)
        assert "m=2048,t=2,p=1" in after
        assert (await api.login(email, password)).status_code == 200
        assert await _password_hash(signing_db, email) == after  # no further rehash
        assert_error_shape(await api.login(email, "not the password"), 401)


async def _password_hash(database_url: str, email: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        value = await conn.fetchval("SELECT password_hash FROM t_users WHERE email = $1", email)
    finally:
        await conn.close()
    assert isinstance(value, str)
    return value
