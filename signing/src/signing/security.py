"""Passwords (Argon2id), signing keys (RSA with a ``kid``) and token issuing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives.asymmetric import rsa

from iot_common.errors import ServiceUnavailable
from signing.config import SigningSettings

_T = TypeVar("_T")

log = logging.getLogger(__name__)

ALGORITHM = "RS256"


class _Gate:
    """At most ``running`` at once and ``waiting`` queued behind them; more are refused."""

    def __init__(self, running: int, waiting: int) -> None:
        self._slots = asyncio.Semaphore(running)
        self._capacity = running + waiting
        self.admitted = 0

    def admit(self) -> None:
        if self.admitted >= self._capacity:
            raise ServiceUnavailable(
                "too many password checks in progress; try again shortly",
                headers={"Retry-After": "1"},
            )
        self.admitted += 1

    async def acquire(self) -> None:
        await self._slots.acquire()

    def release(self, *, acquired: bool = True) -> None:
        if acquired:
            self._slots.release()
        self.admitted -= 1


class Passwords:
    """Argon2id hashing in threads, bounded, with rehash detection when parameters change.

    Every computation takes a slot of one gate (``argon2_max_concurrency``); registrations
    first take a slot of their own, smaller gate, so sign-ups can never hold all the slots
    that sign-ins need. A slot is given back when the thread finishes, not when the request
    ends: a client that disconnects cannot start more hashing than the bound.
    """

    def __init__(self, settings: SigningSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost_kib,
            parallelism=settings.argon2_parallelism,
        )
        # Verified against when the email is unknown, so both failures cost the same time.
        self._dummy_hash = self._hasher.hash("timing-equaliser-" + uuid.uuid4().hex)
        self._all = _Gate(settings.argon2_max_concurrency, settings.argon2_max_waiting)
        self._registrations = _Gate(
            settings.register_max_concurrency, settings.register_max_waiting
        )

    async def hash(self, password: str, *, registration: bool = False) -> str:
        gates = [self._registrations, self._all] if registration else [self._all]
        return await self._bounded(gates, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await self._bounded([self._all], self._verify_sync, password_hash, password)

    async def _bounded(self, gates: list[_Gate], fn: Callable[..., _T], *args: Any) -> _T:
        admitted: list[_Gate] = []
        acquired: list[_Gate] = []
        try:
            for gate in gates:
                gate.admit()
                admitted.append(gate)
            for gate in gates:
                await gate.acquire()
                acquired.append(gate)
        except BaseException:
            for gate in admitted:
                gate.release(acquired=gate in acquired)
            raise
        work = asyncio.ensure_future(asyncio.to_thread(fn, *args))

        def finished(_: asyncio.Future[_T]) -> None:
            for gate in gates:
                gate.release()

        work.add_done_callback(finished)
        return await asyncio.shield(work)

    def _verify_sync(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy_hash, password) and (
                password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The private key tokens are signed with, its ``kid`` and public JWK."""

    kid: str
    private_key: rsa.RSAPrivateKey

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, str]:
        numbers = self.public_key.public_numbers()
        return {
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }

    @classmethod
    def of(cls, private_key: rsa.RSAPrivateKey, kid: str | None = None) -> SigningKey:
        return cls(kid=kid or thumbprint(private_key.public_key()), private_key=private_key)


def thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 JWK thumbprint (base64url SHA-256), shortened to 22 characters."""
    numbers = public_key.public_numbers()
    canonical = json.dumps(
        {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)},
        separators=(",", ":"),
        sort_keys=True,
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()[:22]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: str
    expires_in: int


class TokenIssuer:
    """Signs user tokens that ``iot_common.auth.JWTVerifier`` accepts."""

    def __init__(
        self,
        signing_key: Callable[[], SigningKey],
        *,
        issuer: str,
        audience: str,
        ttl_seconds: int,
    ) -> None:
        #: The key ring's current key, asked per token (a rotation takes effect without restart).
        self._signing_key = signing_key
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl_seconds

    def issue(self, *, user_id: str, email: str, role: str) -> IssuedToken:
        now = int(time.time())
        jti = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "sub": user_id,
            "email": email,
            "role": role,
            "iat": now,
            "exp": now + self._ttl,
            "jti": jti,
            "iss": self._issuer,
            "aud": self._audience,
        }
        key = self._signing_key()
        token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
        return IssuedToken(token=token, jti=jti, expires_in=self._ttl)
