"""Signing keys: kept encrypted in PostgreSQL, rotated without logging anyone out, retired."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from iot_common.errors import Unauthorized
from signing.config import SigningSettings
from signing.db import make_engine, make_sessionmaker
from signing.keys import KeyRingError, ensure_key, rotate
from signing.migrations import upgrade_head
from signing.security import thumbprint

DAY = timedelta(days=1)


@pytest.fixture
def ring_settings(
    pg_database_factory: Callable[[str], str], make_settings: Callable[..., SigningSettings]
) -> Callable[..., SigningSettings]:
    """Settings on a database of this test alone (a key ring nobody else rotates)."""
    url = pg_database_factory("signing_keys")
    upgrade_head(url)

    def make(**overrides: Any) -> SigningSettings:
        values: dict[str, Any] = {
            "database_url": url,
            "private_key_pem": None,
            "key_id": None,
            "key_reload_seconds": 0.1,
            "key_publish_lead_seconds": 0.5,
        }
        return make_settings(**{**values, **overrides})

    return make


@pytest.fixture
async def sessions(ring_settings):
    engine = make_engine(ring_settings().database_url.get_secret_value(), pool_size=1)
    yield make_sessionmaker(engine)
    await engine.dispose()


def pem_of(key: rsa.RSAPrivateKey) -> SecretStr:
    return SecretStr(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def mint(key: rsa.RSAPrivateKey, *, issued: datetime, lifetime: timedelta) -> str:
    """A token as signing issues them (or as whoever holds ``key`` could make one)."""
    claims = {
        "sub": str(uuid.uuid4()),
        "email": "someone@example.com",
        "role": "admin",
        "iat": int(issued.timestamp()),
        "exp": int((issued + lifetime).timestamp()),
        "jti": uuid.uuid4().hex,
        "iss": "iot-signing",
        "aud": "iot-platform",
    }
    kid = thumbprint(key.public_key())
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


async def published_kids(api) -> list[str]:
    return [k["kid"] for k in (await api.client.get("/.well-known/jwks.json")).json()["keys"]]


async def verified_by_signing(api, token: str) -> bool:
    resp = await api.post("/users/verify-token", {"token": token})
    assert resp.status_code in (200, 401), resp.text
    return resp.status_code == 200


async def eventually(check: Callable[[], Any], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_generated_key_is_kept_encrypted_in_the_database_and_reused(serve, ring_settings):
    settings = ring_settings()
    async with serve(**settings.model_dump()) as api:
        (first,) = await published_kids(api)
        token = await api.admin_token()
    async with serve(**settings.model_dump()) as api:
        # A restart (or another replica) signs with the same key: earlier tokens stay good.
        assert await published_kids(api) == [first]
        assert await verified_by_signing(api, token)
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        (pem,) = [
            r["private_pem"] for r in await conn.fetch("SELECT private_pem FROM t_signing_keys")
        ]
    finally:
        await conn.close()
    assert pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):  # useless without the passphrase
        serialization.load_pem_private_key(pem.encode(), password=None)


async def test_rotation_logs_nobody_out(serve, ring_settings, sessions, other_service_of):
    settings = ring_settings()
    async with serve(**settings.model_dump()) as api:
        before = await api.admin_token()
        other_service = await other_service_of(api, jwks_refresh_interval=0.1)
        assert (await other_service.verify(before)).role == "admin"

        rotation = await rotate(sessions, settings)
        assert rotation.previous_kid == kid_of(before)
        # The new key is published before it signs: JWKS holds the current and the next key.
        await eventually(
            lambda: _has(published_kids(api), rotation.new_kid), "new key not published"
        )
        assert set(await published_kids(api)) == {rotation.new_kid, kid_of(before)}

        async def signs_with_new_key() -> bool:
            return kid_of(await api.admin_token()) == rotation.new_kid

        await eventually(signs_with_new_key, "signing did not switch to the new key")
        after = await api.admin_token()
        # Every verifier takes both: the other service learns the new kid on first sight...
        assert (await other_service.verify(after)).role == "admin"
        assert await verified_by_signing(api, after)
        # ... and nobody signed in before the rotation is logged out.
        assert (await other_service.verify(before)).role == "admin"
        assert await verified_by_signing(api, before)
        assert (await api.client.get("/users/", headers=api.bearer(before))).status_code == 200


async def _has(kids, kid: str) -> bool:
    return kid in await kids


async def test_a_retired_key_verifies_for_the_longest_token_lifetime_and_no_longer(
    serve, ring_settings, sessions, other_service_of
):
    """Keys rotated 8 and 6 days ago (7 days is the longest lifetime of a token)."""
    now = datetime.now(UTC)
    k1, k2, k3 = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "123")
    await ensure_key(sessions, ring_settings(private_key_pem=pem_of(k1)), now=now - 9 * DAY)
    await ensure_key(sessions, ring_settings(private_key_pem=pem_of(k2)), now=now - 8 * DAY)
    await ensure_key(sessions, ring_settings(private_key_pem=pem_of(k3)), now=now - 6 * DAY)
    # A 7-day token k2 issued just before it was retired is still valid, and still verifies.
    k2_token = mint(k2, issued=now - 6 * DAY - timedelta(minutes=1), lifetime=7 * DAY)
    # k1 was retired 8 days ago: every token it issued has expired, so a token it signs now
    # can only be a forgery by whoever got hold of it.
    forged = mint(k1, issued=now, lifetime=DAY)

    async with serve(**ring_settings(private_key_pem=pem_of(k3)).model_dump()) as api:
        assert await published_kids(api) == [
            kid_of(mint(k3, issued=now, lifetime=DAY)),
            kid_of(k2_token),
        ]
        other_service = await other_service_of(api, jwks_refresh_interval=0.1)
        other_service.set_keys({kid_of(forged): k1.public_key()})  # it trusted k1 once
        assert (await other_service.verify(k2_token)).role == "admin"
        assert await verified_by_signing(api, k2_token)

        async def forged_refused() -> bool:
            try:
                await other_service.verify(forged)
            except Unauthorized as exc:
                assert "unknown key" in exc.message
                return True
            return False

        await eventually(forged_refused, "a retired key still verifies")
        assert not await verified_by_signing(api, forged)
    # The ring forgot k1 and keeps no private part of k2, which no longer signs.
    conn = await asyncpg.connect(ring_settings().database_url.get_secret_value())
    try:
        rows = {
            r["kid"]: r["private_pem"] for r in await conn.fetch("SELECT * FROM t_signing_keys")
        }
    finally:
        await conn.close()
    assert set(rows) == {kid_of(k2_token), thumbprint(k3.public_key())}
    assert rows[kid_of(k2_token)] is None
    assert rows[thumbprint(k3.public_key())] is not None


async def test_revoking_a_leaked_key_withdraws_it_at_once(
    serve, ring_settings, sessions, other_service_of
):
    settings = ring_settings()
    async with serve(**settings.model_dump()) as api:
        leaked = await api.admin_token()
        other_service = await other_service_of(api, jwks_refresh_interval=0.1)
        assert (await other_service.verify(leaked)).role == "admin"
        rotation = await rotate(sessions, settings, revoke_previous=True)
        assert rotation.previous_verifies_until is None

        async def withdrawn() -> bool:
            return await published_kids(api) == [rotation.new_kid]

        await eventually(withdrawn, "the leaked key is still published")
        assert not await verified_by_signing(api, leaked)

        async def refused_elsewhere() -> bool:
            try:
                await other_service.verify(leaked)
            except Unauthorized:
                return True
            return False

        await eventually(refused_elsewhere, "another service still accepts the leaked key")
        fresh = await api.admin_token()
        assert kid_of(fresh) == rotation.new_kid
        assert (await other_service.verify(fresh)).role == "admin"


async def test_a_wrong_passphrase_is_a_clear_refusal(serve, ring_settings):
    async with serve(**ring_settings().model_dump()):
        pass
    with pytest.raises(KeyRingError, match="SIGNING_KEY_PASSPHRASE is not the passphrase"):
        async with serve(**ring_settings(key_passphrase=SecretStr("another one")).model_dump()):
            pass
