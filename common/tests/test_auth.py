"""JWTVerifier and the revocation list: what a service relying on iot_common sees."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from redis.asyncio import Redis

from iot_common import redis_keys
from iot_common.auth import JWTVerifier, Principal, bearer_token, publish_revocation
from iot_common.errors import Unauthorized
from iotctl.testinfra import drop_redis_namespace

ISS, AUD, KID = "iot-signing", "iot-platform", "k1"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def claims(**overrides):
    now = int(time.time())
    base = {
        "sub": str(uuid.uuid4()),
        "email": "u@example.com",
        "role": "operator",
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "iss": ISS,
        "aud": AUD,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key, kid: str | None = KID, alg: str = "RS256", **overrides) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwk_of(key, kid: str) -> dict:
    if isinstance(key, rsa.RSAPublicKey):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    else:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key))
    return {**jwk, "kid": kid}


class JwksServer:
    """A stand-in for signing's JWKS endpoint that counts how often it is asked."""

    def __init__(self, keys: list[dict] | None = None, *, status: int = 200) -> None:
        self.keys = keys or []
        self.status = status
        self.calls = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.status != 200:
            return httpx.Response(self.status)
        return httpx.Response(200, json={"keys": self.keys})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))


class Env:
    """A Redis namespace of one test, and verifiers built on it."""

    def __init__(self, redis: Redis, ns: str) -> None:
        self.redis = redis
        self.ns = ns
        self.verifiers: list[JWTVerifier] = []

    async def verifier(self, jwks: JwksServer | None = None, **kw) -> JWTVerifier:
        jwks = jwks or JwksServer()
        verifier = JWTVerifier(
            jwks_url="http://signing/.well-known/jwks.json",
            redis=self.redis,
            namespace=self.ns,
            issuer=ISS,
            audience=AUD,
            http=jwks.client(),
            **kw,
        )
        await verifier.start()
        self.verifiers.append(verifier)
        return verifier

    async def revoke(self, jti: str, exp: float) -> None:
        await publish_revocation(self.redis, namespace=self.ns, jti=jti, exp=exp)


@pytest.fixture
async def env(redis_url: str, redis_namespace: str):
    # One fixture owns the client, the verifiers and the cleanup, so they end in that order.
    redis = Redis.from_url(redis_url)
    env = Env(redis, f"{redis_namespace}-auth-{secrets.token_hex(3)}")
    try:
        yield env
    finally:
        for verifier in env.verifiers:
            await verifier.close()
        await redis.aclose()
        drop_redis_namespace(redis_url, env.ns)


def test_bearer_token_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    for bad in (None, "", "Bearer", "Bearer   ", "Basic abc", "abc"):
        with pytest.raises(Unauthorized):
            bearer_token(bad)


async def test_valid_token_gives_the_principal(env, rsa_key):
    verifier = await env.verifier()
    verifier.add_key(KID, rsa_key.public_key())
    token = sign(rsa_key, sub="user-1", role="admin", email="a@example.com", jti="j-1")
    principal = await verifier.verify(token)
    assert principal == Principal(
        user_id="user-1",
        email="a@example.com",
        role="admin",
        jti="j-1",
        exp=principal.exp,
    )
    assert principal.is_admin and principal.can_write
    assert await verifier.verify(token) is principal  # cached
    viewer = await verifier.verify(sign(rsa_key, role="viewer"))
    assert not viewer.is_admin and not viewer.can_write


async def test_eddsa_tokens_are_accepted_too(env):
    key = ed25519.Ed25519PrivateKey.generate()
    jwks = JwksServer([jwk_of(key.public_key(), "ed")])
    verifier = await env.verifier(jwks)
    principal = await verifier.verify(sign(key, kid="ed", alg="EdDSA", role="viewer"))
    assert principal.role == "viewer"


async def test_cached_token_still_expires(env, rsa_key, monkeypatch):
    verifier = await env.verifier()
    verifier.add_key(KID, rsa_key.public_key())
    now = int(time.time())
    token = sign(rsa_key, iat=now, exp=now + 60)
    await verifier.verify(token)
    monkeypatch.setattr(time, "time", lambda: now + 61.0)
    with pytest.raises(Unauthorized, match="expired"):
        await verifier.verify(token)


def bad_tokens(rsa_key) -> dict[str, str]:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed = ed25519.Ed25519PrivateKey.generate()
    good = sign(rsa_key)
    head, _payload, sig = good.split(".")
    now = int(time.time())
    none_header = b64(json.dumps({"alg": "none", "kid": KID}).encode())
    int_kid_header = b64(json.dumps({"alg": "RS256", "kid": 7}).encode())
    return {
        "expired": sign(rsa_key, iat=now - 100, exp=now - 10),
        "tampered": f"{head}.{b64(json.dumps(claims(role='admin')).encode())}.{sig}",
        "no signature": f"{head}.{good.split('.')[1]}.",
        "alg none": f"{none_header}.{b64(json.dumps(claims()).encode())}.",
        "HS256": jwt.encode(claims(), "secret" * 6, algorithm="HS256", headers={"kid": KID}),
        "other key same kid": sign(other),
        "unknown kid": sign(other, kid="nope"),
        "no kid": sign(rsa_key, kid=None),
        "kid not a string": f"{int_kid_header}.{good.split('.', 1)[1]}",
        "EdDSA under an RSA kid": sign(ed, alg="EdDSA"),
        "RS256 under an Ed25519 kid": sign(rsa_key, kid="ed"),
        "wrong issuer": sign(rsa_key, iss="someone"),
        "wrong audience": sign(rsa_key, aud="elsewhere"),
        "missing sub": sign(rsa_key, sub=None),
        "missing jti": sign(rsa_key, jti=None),
        "missing exp": sign(rsa_key, exp=None),
        "bad role": sign(rsa_key, role="root"),
        "garbage": "garbage",
        "empty": "",
        "dots": "..",
        "not base64": "!!!.???.***",
        "header is a list": f"{b64(b'[1]')}.{b64(b'{}')}.",
        "lone surrogate": "\ud800.e30.",
        "non-ascii": "токен.токен.токен",
    }


BAD_KINDS = [
    "expired",
    "tampered",
    "no signature",
    "alg none",
    "HS256",
    "other key same kid",
    "unknown kid",
    "no kid",
    "kid not a string",
    "EdDSA under an RSA kid",
    "RS256 under an Ed25519 kid",
    "wrong issuer",
    "wrong audience",
    "missing sub",
    "missing jti",
    "missing exp",
    "bad role",
    "garbage",
    "empty",
    "dots",
    "not base64",
    "header is a list",
    "lone surrogate",
    "non-ascii",
]


@pytest.fixture(scope="module")
def forged(rsa_key):
    tokens = bad_tokens(rsa_key)
    assert sorted(tokens) == sorted(BAD_KINDS)
    return tokens


@pytest.mark.parametrize("kind", BAD_KINDS)
async def test_bad_tokens_raise_unauthorized_and_nothing_else(env, rsa_key, forged, kind):
    ed = ed25519.Ed25519PrivateKey.generate()
    verifier = await env.verifier(JwksServer([jwk_of(ed.public_key(), "ed")]))
    verifier.add_key(KID, rsa_key.public_key())
    with pytest.raises(Unauthorized):
        await verifier.verify(forged[kind])


async def test_unknown_kid_refetches_jwks_but_not_too_often(env, rsa_key):
    jwks = JwksServer([])
    verifier = await env.verifier(jwks, jwks_min_refresh=30)
    assert jwks.calls == 1  # at start
    # Signing rotated its key: the first token with the new kid triggers a refetch.
    jwks.keys = [jwk_of(rsa_key.public_key(), "rotated")]
    verifier._last_fetch -= 31  # the last fetch was a while ago
    assert (await verifier.verify(sign(rsa_key, kid="rotated"))).role == "operator"
    assert jwks.calls == 2
    # Forged kids cannot make it hammer signing.
    for i in range(20):
        with pytest.raises(Unauthorized, match="unknown key"):
            await verifier.verify(sign(rsa_key, kid=f"forged-{i}"))
    assert jwks.calls == 2


async def test_jwks_unreachable_at_start_is_retried_later(env, rsa_key):
    jwks = JwksServer([jwk_of(rsa_key.public_key(), KID)], status=503)
    verifier = await env.verifier(jwks, jwks_min_refresh=0)
    with pytest.raises(Unauthorized):
        await verifier.verify(sign(rsa_key))
    jwks.status = 200
    assert (await verifier.verify(sign(rsa_key))).role == "operator"


async def test_one_unusable_jwk_does_not_hide_the_others(env, rsa_key):
    jwks = JwksServer(
        [
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "weird", "kid": "alien"},
            "not an object",
            jwk_of(rsa_key.public_key(), KID),
        ]
    )
    verifier = await env.verifier(jwks)
    assert (await verifier.verify(sign(rsa_key))).role == "operator"


async def test_revocation_reaches_a_running_verifier_within_a_second(env, rsa_key):
    verifier = await env.verifier()
    verifier.add_key(KID, rsa_key.public_key())
    token, other = sign(rsa_key), sign(rsa_key)
    principal = await verifier.verify(token)  # now cached
    await verifier.verify(other)

    await env.revoke(principal.jti, principal.exp)
    revoked_at = time.monotonic()
    while True:
        try:
            await verifier.verify(token)
        except Unauthorized as exc:
            assert "revoked" in exc.message
            break
        assert time.monotonic() - revoked_at < 1.0
        await asyncio.sleep(0.01)
    assert (await verifier.verify(other)).jti != principal.jti

    ttl = await env.redis.ttl(redis_keys.revoked_token(env.ns, principal.jti))
    assert 590 <= ttl <= 602


async def test_revocations_before_start_are_known_at_start(env, rsa_key):
    token = sign(rsa_key)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    await env.revoke(jti, time.time() + 600)
    verifier = await env.verifier()
    verifier.add_key(KID, rsa_key.public_key())
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(token)


async def test_a_malformed_stream_entry_does_not_stop_revocations(env, rsa_key):
    verifier = await env.verifier()
    verifier.add_key(KID, rsa_key.public_key())
    first, second = sign(rsa_key), sign(rsa_key)
    jti1 = (await verifier.verify(first)).jti
    jti2 = (await verifier.verify(second)).jti
    stream = redis_keys.revocation_stream(env.ns)
    await env.redis.xadd(stream, {"nothing": "here"})
    await env.redis.xadd(stream, {"jti": jti1, "exp": "not a number"})
    await env.revoke(jti2, time.time() + 600)
    deadline = time.monotonic() + 2
    while jti2 not in verifier.revocations:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    for token in (first, second):
        with pytest.raises(Unauthorized, match="revoked"):
            await verifier.verify(token)


@pytest.mark.parametrize(
    ("overrides", "accepted"),
    [
        (lambda now: {"aud": [AUD, "other"]}, True),
        (lambda now: {"aud": ["other"]}, False),
        (lambda now: {"aud": None}, False),
        (lambda now: {"aud": 5}, False),
        (lambda now: {"iss": None}, False),
        (lambda now: {"exp": now + 60.5}, True),
        (lambda now: {"exp": "9999999999"}, False),
        (lambda now: {"exp": True}, False),
        (lambda now: {"iat": "now"}, False),
        (lambda now: {"iat": int(now) + 5}, True),  # another host's clock slightly ahead
        (lambda now: {"nbf": int(now) + 3600}, False),
        (lambda now: {"nbf": int(now) - 10}, True),
        (lambda now: {"sub": 42}, False),
        (lambda now: {"jti": ["a"]}, False),
        (lambda now: {"email": None}, True),
    ],
)
async def test_claim_rules(env, rsa_key, overrides, accepted):
    verifier = await env.verifier()
    verifier.add_key(KID, rsa_key.public_key())
    token = sign(rsa_key, **overrides(time.time()))
    if accepted:
        assert (await verifier.verify(token)).role == "operator"
    else:
        with pytest.raises(Unauthorized):
            await verifier.verify(token)


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "RS256", "kid": KID, "crit": ["exp"]},
        {"alg": "RS256", "kid": KID, "b64": False},
        {"alg": "RS512", "kid": KID},
        {"alg": "RS256"},
    ],
)
async def test_unsupported_headers_are_refused(env, rsa_key, header):
    verifier = await env.verifier()
    verifier.add_key(KID, rsa_key.public_key())
    payload = b64(json.dumps(claims()).encode())
    head = b64(json.dumps(header).encode())
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    sig = rsa_key.sign(f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(Unauthorized):
        await verifier.verify(f"{head}.{payload}.{b64(sig)}")


@pytest.mark.parametrize("shape", ["four.seg.ments.here", "a.b.c.d.e", "a.b", "a", "a..b"])
async def test_wrong_number_of_segments(env, rsa_key, shape):
    verifier = await env.verifier()
    verifier.add_key(KID, rsa_key.public_key())
    with pytest.raises(Unauthorized):
        await verifier.verify(shape)
    good = sign(rsa_key)
    with pytest.raises(Unauthorized):
        await verifier.verify(good + ".extra")
    with pytest.raises(Unauthorized):
        await verifier.verify(good + "=")


async def test_keys_can_be_given_as_pem_or_private_key(env, rsa_key):
    from cryptography.hazmat.primitives import serialization

    verifier = await env.verifier()
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verifier.add_key("pem-str", pem.decode())
    verifier.add_key("pem-bytes", pem)
    verifier.add_key("private", rsa_key)
    for kid in ("pem-str", "pem-bytes", "private"):
        assert (await verifier.verify(sign(rsa_key, kid=kid))).role == "operator"


async def test_a_key_signing_stops_publishing_stops_verifying(env, rsa_key):
    """Rotation: the previous key verifies while published; once dropped, its tokens fail."""
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = JwksServer([jwk_of(rsa_key.public_key(), "old")])
    verifier = await env.verifier(jwks, jwks_refresh_interval=0.05)
    old_token = sign(rsa_key, kid="old")
    assert (await verifier.verify(old_token)).role == "operator"  # now in the token cache
    # Rotated: signing publishes the new key and the previous one.
    jwks.keys = [jwk_of(new_key.public_key(), "new"), jwk_of(rsa_key.public_key(), "old")]
    assert (await verifier.verify(sign(new_key, kid="new"))).role == "operator"
    assert (await verifier.verify(old_token)).role == "operator"
    # The previous key is retired for good; whoever still holds it cannot mint tokens, and a
    # token it signed (cached or not) is refused, without waiting for an unknown kid.
    jwks.keys = [jwk_of(new_key.public_key(), "new")]
    calls = jwks.calls
    deadline = time.monotonic() + 5
    while jwks.calls < calls + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    with pytest.raises(Unauthorized, match="unknown key"):
        await verifier.verify(old_token)
    with pytest.raises(Unauthorized, match="unknown key"):
        await verifier.verify(sign(rsa_key, kid="old", exp=int(time.time()) + 86_400))
    assert (await verifier.verify(sign(new_key, kid="new"))).role == "operator"


async def test_refresh_failures_keep_the_keys(env, rsa_key):
    jwks = JwksServer([jwk_of(rsa_key.public_key(), KID)])
    verifier = await env.verifier(jwks, jwks_refresh_interval=0.05)
    jwks.status = 503  # signing down: tokens keep verifying with the keys already known
    calls = jwks.calls
    deadline = time.monotonic() + 5
    while jwks.calls < calls + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert (await verifier.verify(sign(rsa_key))).role == "operator"


async def test_revocation_of_a_week_long_token_outlives_a_day(env, rsa_key):
    """A 7-day token revoked 25 hours ago is still refused by a verifier started now."""
    now = time.time()
    jti = uuid.uuid4().hex
    token = sign(rsa_key, jti=jti, iat=int(now - 25 * 3600), exp=int(now + 6 * 86_400 - 3600))
    stream = redis_keys.revocation_stream(env.ns)
    # The revocation as signing published it 25 hours ago (stream ids are millisecond clocks).
    logged_out_ms = int((now - 25 * 3600) * 1000)
    await env.redis.xadd(
        stream, {"jti": jti, "exp": str(now + 6 * 86_400)}, id=f"{logged_out_ms}-0"
    )
    # Logouts since then do not push it out either.
    for _ in range(3):
        await env.revoke(uuid.uuid4().hex, now + 600)
    assert await env.redis.xlen(stream) == 4

    verifier = await env.verifier()
    verifier.add_key(KID, rsa_key.public_key())
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(token)


async def test_revocations_older_than_the_longest_token_lifetime_are_trimmed(env):
    now = time.time()
    stream = redis_keys.revocation_stream(env.ns)
    old_ms = int((now - 8 * 86_400) * 1000)
    for i in range(200):  # several entries, so approximate trimming can drop whole nodes
        await env.redis.xadd(
            stream, {"jti": f"old-{i}", "exp": str(now - 86_400)}, id=f"{old_ms}-{i}"
        )
    await env.revoke("fresh", now + 600)
    entries = await env.redis.xrange(stream)
    jtis = [fields[b"jti"].decode() for _, fields in entries]
    assert "fresh" in jtis
    assert len(jtis) < 201
