"""Local JWT verification for services: signing's public keys from JWKS, revocation via Redis.

Verification is local (no call to signing per request). Public keys are fetched from the JWKS
endpoint, cached, and refetched when a token names an unknown ``kid`` (at most once per
``jwks_min_refresh`` seconds, so forged kids cannot hammer signing) and every
``jwks_refresh_interval`` seconds, so a key signing has retired stops verifying here too. Revoked
token ids are held in memory, kept current by tailing a Redis stream that signing appends to on
logout, so a revoked token is refused everywhere within a fraction of a second without a Redis
round trip per request; the stream keeps every revocation for the longest token lifetime.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, padding, rsa
from jwt import PyJWK
from redis.asyncio import Redis

from iot_common import redis_keys
from iot_common.errors import Unauthorized

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "EdDSA"]
ROLES = ("admin", "operator", "viewer")
#: The longest lifetime a token of this platform can have (signing refuses a longer TTL).
#: Revocations and retired signing keys are kept exactly this long: until every token they
#: concern has expired anyway.
MAX_TOKEN_LIFETIME_SECONDS = 7 * 86_400


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the verified claims of a user token."""

    user_id: str
    email: str
    role: str
    jti: str
    exp: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def can_write(self) -> bool:
        return self.role in ("admin", "operator")


def bearer_token(authorization: str | None) -> str:
    """Extract the token from an ``Authorization: Bearer …`` header or raise 401."""
    if not authorization:
        raise Unauthorized("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token")
    return token.strip()


class RevocationList:
    """In-memory set of revoked token ids, fed from the Redis revocation stream."""

    def __init__(
        self, redis: Redis, *, namespace: str, max_token_ttl: float = MAX_TOKEN_LIFETIME_SECONDS
    ) -> None:
        self._redis = redis
        self._stream = redis_keys.revocation_stream(namespace)
        self._max_ttl = max_token_ttl
        self._revoked: dict[str, float] = {}  # jti -> expires_at
        self._last_id = "0-0"
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.synced = asyncio.Event()

    def __contains__(self, jti: str) -> bool:
        return jti in self._revoked

    async def start(self) -> None:
        start_ms = int((time.time() - self._max_ttl) * 1000)
        self._last_id = f"{max(start_ms, 0)}-0"
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._poll(block_ms=None), timeout=2)
        self._task = asyncio.create_task(self._run(), name="revocation-tail")

    async def close(self) -> None:
        self._closed = True
        if self._task:
            # redis-py can swallow a cancellation that lands while its connection is being set
            # up (a verifier closed right after start), leaving the task blocked in XREAD; so
            # cancel until it is done (the flag also ends the loop). asyncio.wait, not awaiting
            # the task, keeps its cancellation out of the caller.
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait([self._task], timeout=0.05)

    async def _poll(self, block_ms: int | None) -> None:
        resp: Any = await self._redis.xread(
            {self._stream: self._last_id}, count=10_000, block=block_ms
        )
        now = time.time()
        for _stream, entries in resp or []:
            for entry_id, fields in entries:
                self._last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                jti = fields.get(b"jti") or fields.get("jti")
                exp = fields.get(b"exp") or fields.get("exp") or 0
                if jti is None:
                    continue
                jti_s = jti.decode() if isinstance(jti, bytes) else str(jti)
                try:
                    expires = float(exp)
                except ValueError:
                    # Keep it revoked for the longest lifetime a token can have.
                    expires = now + self._max_ttl
                self._revoked[jti_s] = expires
        if len(self._revoked) > 10_000:
            self._revoked = {j: e for j, e in self._revoked.items() if e > now}
        self.synced.set()

    async def _run(self) -> None:
        backoff = 0.2
        while not self._closed:
            try:
                await self._poll(block_ms=500)
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                log.warning("revocation stream read failed: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


async def publish_revocation(redis: Redis, *, namespace: str, jti: str, exp: float) -> None:
    """Mark ``jti`` revoked until ``exp``: a TTL key for point checks plus a stream entry."""
    await publish_revocations(redis, namespace=namespace, revoked=[(jti, exp)])


async def publish_revocations(
    redis: Redis, *, namespace: str, revoked: Iterable[tuple[str, float]]
) -> None:
    """Publish several revocations in one round trip (signing re-publishes after Redis lost them).

    The stream is trimmed by age, not length: entries younger than the longest token lifetime
    stay (a verifier starting later replays them), however many logouts there were.
    """
    now = time.time()
    oldest_ms = max(0, int((now - MAX_TOKEN_LIFETIME_SECONDS) * 1000))
    async with redis.pipeline(transaction=True) as pipe:
        for jti, exp in revoked:
            pipe.set(redis_keys.revoked_token(namespace, jti), "1", ex=max(1, int(exp - now) + 1))
            pipe.xadd(
                redis_keys.revocation_stream(namespace),
                {"jti": jti, "exp": str(exp)},
                minid=f"{oldest_ms}-0",
                approximate=True,
            )
        await pipe.execute()


class JWTVerifier:
    """Verifies user tokens locally; one instance per process, started in the app lifespan."""

    def __init__(
        self,
        *,
        jwks_url: str,
        redis: Redis,
        namespace: str,
        issuer: str,
        audience: str,
        http: httpx.AsyncClient | None = None,
        jwks_min_refresh: float = 5.0,
        jwks_refresh_interval: float = 300.0,
        cache_size: int = 10_000,
    ) -> None:
        self._jwks_url = jwks_url
        self._http = http or httpx.AsyncClient(timeout=5.0)
        self._own_http = http is None
        self._issuer = issuer
        self._audience = audience
        #: Keys from the last JWKS answer (replaced as a whole: a key signing no longer
        #: publishes stops verifying) and keys trusted directly through :meth:`add_key`.
        self._jwks_keys: dict[str, Any] = {}
        self._pinned: dict[str, Any] = {}
        self._last_fetch = 0.0
        self._fetch_lock = asyncio.Lock()
        self._min_refresh = jwks_min_refresh
        self._refresh_interval = jwks_refresh_interval
        self._refresher: asyncio.Task[None] | None = None
        self.revocations = RevocationList(redis, namespace=namespace)
        #: token -> (principal, kid of the key that verified it)
        self._cache: OrderedDict[str, tuple[Principal, str]] = OrderedDict()
        self._cache_size = cache_size

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self._refresh_keys(force=True)
        await self.revocations.start()
        self._refresher = asyncio.create_task(self._refresh_periodically(), name="jwks-refresh")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.wait([self._refresher])
        await self.revocations.close()
        if self._own_http:
            await self._http.aclose()

    def add_key(self, kid: str, key: Any) -> None:
        """Trust a public key directly (tests; kept whatever JWKS says)."""
        self._pinned[kid] = _public_key(key)

    def set_keys(self, keys: dict[str, Any]) -> None:
        """Replace the published key set (what a JWKS answer holds), forgetting dropped keys."""
        fresh = {kid: _public_key(key) for kid, key in keys.items()}
        dropped = self._jwks_keys.keys() - fresh.keys()
        self._jwks_keys = fresh
        if dropped:
            log.info(
                "signing keys %s are no longer published; tokens they signed are refused",
                ", ".join(sorted(dropped)),
            )
            self._cache = OrderedDict(
                (token, entry) for token, entry in self._cache.items() if entry[1] not in dropped
            )

    def _key(self, kid: str) -> Any:
        key = self._jwks_keys.get(kid)
        return self._pinned.get(kid) if key is None else key

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self._refresh_keys(force=True)
            except (httpx.HTTPError, ValueError) as exc:
                # Keep the keys we have: signing being down must not refuse every token.
                log.warning("JWKS refresh from %s failed: %s", self._jwks_url, exc)

    async def _refresh_keys(self, *, force: bool = False) -> None:
        async with self._fetch_lock:
            if not force:
                # Only fetches for unknown kids are throttled (forged kids must not hammer
                # signing); the start and the periodic refresh do not use up that allowance.
                if time.monotonic() - self._last_fetch < self._min_refresh:
                    return
                self._last_fetch = time.monotonic()
            resp = await self._http.get(self._jwks_url)
            resp.raise_for_status()
            body = resp.json()
            if not isinstance(body, dict) or not isinstance(body.get("keys", []), list):
                raise ValueError("not a JWKS document")
            keys: dict[str, Any] = {}
            for jwk in body.get("keys", []):
                kid = jwk.get("kid") if isinstance(jwk, dict) else None
                if not kid:
                    continue
                try:
                    keys[kid] = PyJWK.from_dict(jwk).key
                except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
                    # One key this library cannot use must not hide the others.
                    log.warning("ignoring unusable JWK %s: %s", kid, exc)
            self.set_keys(keys)

    async def verify(self, token: str) -> Principal:
        """Return the token's principal, or raise :class:`Unauthorized`."""
        entry = self._cache.get(token)
        if entry is not None:
            cached = entry[0]
            if cached.exp <= time.time():
                self._cache.pop(token, None)
                raise Unauthorized("token expired")
            if cached.jti in self.revocations:
                raise Unauthorized("token revoked")
            return cached
        try:
            header = _json_segment(token.split(".", 1)[0])
        except ValueError as exc:
            raise Unauthorized("malformed token") from exc
        if header.get("alg") not in ALGORITHMS:
            raise Unauthorized("unsupported token algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized("token has no key id")
        key = self._key(kid)
        if key is None:
            with contextlib.suppress(Exception):
                await self._refresh_keys()
            key = self._key(kid)
            if key is None:
                raise Unauthorized("token signed by an unknown key")
        principal = self.decode(token, key)
        if principal.jti in self.revocations:
            raise Unauthorized("token revoked")
        self._cache[token] = (principal, kid)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    def decode(self, token: str, key: Any) -> Principal:
        """Check the token's signature with ``key`` and its claims; its principal or 401.

        Done here rather than with ``jwt.decode``: PyJWT's per-character base64 check made it
        about three times slower than the RSA verification itself, on the path every service
        request takes. Only the compact JWS form this platform issues is accepted.
        """
        try:
            header_b64, payload_b64, signature_b64 = token.split(".")
            header = _json_segment(header_b64)
            claims = _json_segment(payload_b64)
            signature = _b64url_decode(signature_b64)
        except ValueError as exc:  # also JSON errors and non-ASCII ("\ud800") tokens
            raise Unauthorized("invalid token") from exc
        if "crit" in header or header.get("b64", True) is not True:
            raise Unauthorized("invalid token")
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        if not _signature_ok(header.get("alg"), key, signing_input, signature):
            raise Unauthorized("invalid token")
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        now = time.time()
        exp: Any = claims.get("exp")
        iat: Any = claims.get("iat")
        nbf: Any = claims.get("nbf", 0)
        if not (_is_time(exp) and _is_time(iat) and _is_time(nbf)):
            raise Unauthorized("invalid token")
        if exp <= now:
            raise Unauthorized("token expired")
        if iat > now + CLOCK_SKEW or nbf > now + CLOCK_SKEW:
            raise Unauthorized("invalid token")
        if claims.get("iss") != self._issuer or not _audience_ok(claims.get("aud"), self._audience):
            raise Unauthorized("invalid token")
        sub, jti, role = claims.get("sub"), claims.get("jti"), claims.get("role")
        if not isinstance(sub, str) or not isinstance(jti, str) or role not in ROLES:
            raise Unauthorized("invalid token")
        return Principal(
            user_id=sub,
            email=str(claims.get("email", "")),
            role=str(role),
            jti=jti,
            exp=int(exp),
        )


#: Tolerance for ``iat``/``nbf`` slightly ahead of this host's clock (another host issued it).
CLOCK_SKEW = 30.0
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_PKCS1V15 = padding.PKCS1v15()


def _b64url_decode(segment: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2) → bytes; ValueError otherwise."""
    if _B64URL.fullmatch(segment) is None or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _json_segment(segment: str) -> dict[str, Any]:
    value = orjson.loads(_b64url_decode(segment))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _is_time(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value)
    )


def _audience_ok(aud: Any, audience: str) -> bool:
    if isinstance(aud, str):
        return aud == audience
    return isinstance(aud, list) and audience in aud


def _signature_ok(alg: Any, key: Any, signing_input: bytes, signature: bytes) -> bool:
    """Verify with the algorithm the header names, only if ``key`` is of that algorithm's type."""
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, _PKCS1V15, hashes.SHA256())
            return True
        if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, signing_input)
            return True
    except InvalidSignature:
        return False
    return False


def _public_key(key: Any) -> Any:
    """The public key to verify with, from a key object, a private key or PEM text."""
    if isinstance(key, str | bytes):
        key = serialization.load_pem_public_key(key.encode() if isinstance(key, str) else key)
    if isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        key = key.public_key()
    return key
