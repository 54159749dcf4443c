"""Passwords (Argon2id), the signing key (RSA with a ``kid``) and token issuing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from signing.config import SigningSettings

log = logging.getLogger(__name__)

ALGORITHM = "RS256"


class Passwords:
    """Argon2id hashing off the event loop, with rehash detection when parameters change."""

    def __init__(self, settings: SigningSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost_kib,
            parallelism=settings.argon2_parallelism,
        )
        # Verified against when the email is unknown, so both failures cost the same time.
        self._dummy_hash = self._hasher.hash("timing-equaliser-" + uuid.uuid4().hex)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await asyncio.to_thread(self._verify_sync, password_hash, password)

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


def _load_or_create_key_file(path: Path) -> rsa.RSAPrivateKey:
    path = path.expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            # O_EXCL: when several workers start at once, the first key written wins.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            log.info("generated a new signing key in %s", path)
            return key
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return loaded


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
    def from_settings(cls, settings: SigningSettings) -> SigningKey:
        if settings.private_key_pem is not None:
            loaded = serialization.load_pem_private_key(
                settings.private_key_pem.get_secret_value().encode(), password=None
            )
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError("private_key_pem does not hold an RSA private key")
            key = loaded
        else:
            key = _load_or_create_key_file(settings.key_file)
        return cls(kid=settings.key_id or thumbprint(key.public_key()), private_key=key)


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

    def __init__(self, key: SigningKey, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self._key = key
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
        token = jwt.encode(
            claims, self._key.private_key, algorithm=ALGORITHM, headers={"kid": self._key.kid}
        )
        return IssuedToken(token=token, jti=jti, expires_in=self._ttl)
