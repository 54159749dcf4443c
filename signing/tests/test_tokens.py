"""Tokens: verification, revocation on logout (seen by other services), keys, JWKS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from redis.asyncio import Redis

from iot_common import redis_keys
from iot_common.auth import JWTVerifier
from iot_common.errors import Unauthorized


def claims(**overrides):
    now = int(time.time())
    base = {
        "sub": str(uuid.uuid4()),
        "email": "someone@example.com",
        "role": "admin",
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "iss": "iot-signing",
        "aud": "iot-platform",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, payload: dict, signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


async def verify(api, token: str) -> httpx.Response:
    return await api.post("/users/verify-token", {"token": token})


async def test_verify_token_returns_the_claims(api):
    email, token = await api.user_token("operator")
    resp = await verify(api, token)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["email"] == email and body["role"] == "operator"
    assert body["exp"] > time.time()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["kid"] == api.kid
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"sub", "email", "role", "iat", "exp", "jti", "iss", "aud"}
    assert payload["iss"] == "iot-signing" and payload["aud"] == "iot-platform"
    assert payload["exp"] - payload["iat"] == 3600

    by_header = await api.client.post("/users/verify-token", headers=api.bearer(token))
    assert by_header.status_code == 200
    assert by_header.json() == body


def forged_tokens(private_key, kid: str) -> dict[str, str]:
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = jwt.encode(claims(), private_key, algorithm="RS256", headers={"kid": kid})
    head, payload, sig = good.split(".")
    tampered_payload = b64(json.dumps(claims(role="admin", sub="attacker")).encode())
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_head = b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
    hs_body = b64(json.dumps(claims()).encode())
    hs_sig = hmac.new(public_pem, f"{hs_head}.{hs_body}".encode(), hashlib.sha256).digest()
    return {
        "expired": jwt.encode(
            claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
            private_key,
            algorithm="RS256",
            headers={"kid": kid},
        ),
        "tampered payload": f"{head}.{tampered_payload}.{sig}",
        "signature stripped": f"{head}.{payload}.",
        "alg none": unsigned({"alg": "none", "typ": "JWT", "kid": kid}, claims()),
        "alg None": unsigned({"alg": "None", "kid": kid}, claims()),
        "wrong key, same kid": jwt.encode(
            claims(), other_rsa, algorithm="RS256", headers={"kid": kid}
        ),
        "unknown kid": jwt.encode(
            claims(), other_rsa, algorithm="RS256", headers={"kid": "no-such-key"}
        ),
        "no kid": jwt.encode(claims(), private_key, algorithm="RS256"),
        "HS256 with the public key as secret": f"{hs_head}.{hs_body}.{b64(hs_sig)}",
        "EdDSA by another key": jwt.encode(
            claims(),
            ed25519.Ed25519PrivateKey.generate(),
            algorithm="EdDSA",
            headers={"kid": kid},
        ),
        "wrong issuer": jwt.encode(
            claims(iss="evil"), private_key, algorithm="RS256", headers={"kid": kid}
        ),
        "wrong audience": jwt.encode(
            claims(aud="other"), private_key, algorithm="RS256", headers={"kid": kid}
        ),
        "no exp": jwt.encode(
            claims(exp=None), private_key, algorithm="RS256", headers={"kid": kid}
        ),
        "no jti": jwt.encode(
            claims(jti=None), private_key, algorithm="RS256", headers={"kid": kid}
        ),
        "unknown role": jwt.encode(
            claims(role="root"), private_key, algorithm="RS256", headers={"kid": kid}
        ),
        "issued in the future": jwt.encode(
            claims(iat=int(time.time()) + 3600),
            private_key,
            algorithm="RS256",
            headers={"kid": kid},
        ),
        "garbage": "not a token",
        "three dots": "...",
        "json header not an object": unsigned([1, 2], claims()),  # type: ignore[arg-type]
        "bad base64": "@@@.###.$$$",
        "unicode": "ключ.ключ.ключ",
        "lone surrogate": "\ud800.a.b",
        "huge": "a" * 16_000,
    }


@pytest.fixture(scope="module")
def forged(private_key):
    return forged_tokens(private_key, "test-key-1")


KINDS = [
    "expired",
    "tampered payload",
    "signature stripped",
    "alg none",
    "alg None",
    "wrong key, same kid",
    "unknown kid",
    "no kid",
    "HS256 with the public key as secret",
    "EdDSA by another key",
    "wrong issuer",
    "wrong audience",
    "no exp",
    "no jti",
    "unknown role",
    "issued in the future",
    "garbage",
    "three dots",
    "json header not an object",
    "bad base64",
    "unicode",
    "lone surrogate",
    "huge",
]


def test_every_forgery_is_exercised(forged):
    assert sorted(forged) == sorted(KINDS)


@pytest.mark.parametrize("kind", KINDS)
async def test_bad_tokens_get_401_everywhere(api, forged, kind):
    token = forged[kind]
    resp = await verify(api, token)
    if kind == "lone surrogate":
        assert resp.status_code == 422, resp.text
    else:
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"]["code"] == "unauthorized"
        assert resp.headers["www-authenticate"] == "Bearer"
    if token.isascii():
        for method, path in (("GET", "/users/"), ("POST", "/users/logout")):
            resp = await api.client.request(method, path, headers=api.bearer(token))
            assert resp.status_code == 401, (method, path, resp.text)


async def test_expired_token_says_so(api, forged):
    resp = await verify(api, forged["expired"])
    assert resp.status_code == 401
    assert "expired" in resp.json()["error"]["message"]


async def test_verify_without_any_token_is_401(api):
    assert (await api.client.post("/users/verify-token")).status_code == 401
    resp = await api.client.post("/users/verify-token", headers={"Authorization": "Basic eA=="})
    assert resp.status_code == 401
    resp = await api.post("/users/verify-token", {"token": ""})
    assert resp.status_code == 422
    resp = await api.post("/users/verify-token", {"token": 12})
    assert resp.status_code == 422


async def test_logout_revokes_the_token_everywhere(api, redis_url, namespace, signing_db):
    # Another service, started before the logout and with the token already in its cache.
    redis = Redis.from_url(redis_url)
    jwks = await api.client.get("/.well-known/jwks.json")
    verifier = JWTVerifier(
        jwks_url="http://signing/.well-known/jwks.json",
        redis=redis,
        namespace=namespace,
        issuer="iot-signing",
        audience="iot-platform",
        http=api.client,
    )
    await verifier.start()
    try:
        assert jwks.status_code == 200
        _, token = await api.user_token("viewer")
        _, other_token = await api.user_token("viewer")
        principal = await verifier.verify(token)  # JWKS fetched from signing over HTTP
        assert principal.role == "viewer"

        resp = await api.client.post("/users/logout", headers=api.bearer(token))
        assert resp.status_code == 204, resp.text
        logged_out_at = time.monotonic()

        # Signing itself refuses it at once.
        assert (await verify(api, token)).status_code == 401
        again = await api.client.post("/users/logout", headers=api.bearer(token))
        assert again.status_code == 401

        # The other service refuses it within a second, without calling signing.
        while True:
            try:
                await verifier.verify(token)
            except Unauthorized as exc:
                assert "revoked" in exc.message
                break
            assert time.monotonic() - logged_out_at < 1.0, "revocation not seen within 1 s"
            await asyncio.sleep(0.02)
        # Other tokens are unaffected.
        assert (await verifier.verify(other_token)).role == "viewer"
        assert (await verify(api, other_token)).status_code == 200

        # Recorded in PostgreSQL and in Redis with a TTL of the token's remaining lifetime.
        jti = principal.jti
        ttl = await redis.ttl(redis_keys.revoked_token(namespace, jti))
        assert 3500 < ttl <= 3601
        conn = await asyncpg.connect(signing_db)
        try:
            row = await conn.fetchrow(
                "SELECT jti, user_id, blacklisted_on, expires_at FROM t_blacklist_tokens "
                "WHERE jti = $1",
                jti,
            )
        finally:
            await conn.close()
        assert row is not None
        assert str(row["user_id"]) == principal.user_id
        assert int(row["expires_at"].timestamp()) == principal.exp
    finally:
        await verifier.close()
        await redis.aclose()


async def test_a_verifier_started_after_logout_also_refuses(api, other_service_of):
    _, token = await api.user_token("viewer")
    assert (await api.client.post("/users/logout", headers=api.bearer(token))).status_code == 204
    verifier = await other_service_of(api)
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(token)


async def test_logout_needs_a_token(api):
    resp = await api.client.post("/users/logout")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "unauthorized"


async def test_jwks_publishes_the_signing_key(api, private_key):
    resp = await api.client.get("/.well-known/jwks.json")
    assert resp.status_code == 200
    (key,) = resp.json()["keys"]
    assert key["kid"] == api.kid and key["alg"] == "RS256" and key["use"] == "sig"
    assert key["kty"] == "RSA"
    assert "d" not in key and "p" not in key  # public parts only
    public = jwt.PyJWK.from_dict(key).key
    assert public.public_numbers() == private_key.public_key().public_numbers()


async def test_token_lifetime_follows_settings(serve):
    async with serve(token_ttl_seconds=120) as api:
        resp = await api.login(api.admin_email, api.admin_password)
        assert resp.json()["expires_in"] == 120
        payload = jwt.decode(resp.json()["access_token"], options={"verify_signature": False})
        assert payload["exp"] - payload["iat"] == 120


async def test_revocations_survive_redis_losing_them(serve, redis_url, namespace, other_service_of):
    """Redis restarted without its data: signing re-publishes the revocations it keeps."""
    async with serve(revocation_check_seconds=0.1) as api:
        _, token = await api.user_token("viewer")
        assert (
            await api.client.post("/users/logout", headers=api.bearer(token))
        ).status_code == 204
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        redis = Redis.from_url(redis_url)
        try:
            revoked_key = redis_keys.revoked_token(namespace, jti)
            await redis.delete(redis_keys.revocation_stream(namespace), revoked_key)
            deadline = time.monotonic() + 10
            while not await redis.exists(revoked_key):
                assert time.monotonic() < deadline, "revocation not re-published"
                await asyncio.sleep(0.05)
        finally:
            await redis.aclose()
        assert (await verify(api, token)).status_code == 401
        # A service starting now learns of it from the stream.
        with pytest.raises(Unauthorized, match="revoked"):
            await (await other_service_of(api)).verify(token)
