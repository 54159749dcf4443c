"""The key ring: signing keys in PostgreSQL, rotated without logging anyone out.

Each key signs from ``active_from`` until ``retired_at`` (the next key's ``active_from``) and is
published in JWKS from its creation until :data:`MAX_TOKEN_LIFETIME_SECONDS` after it retired,
when every token it signed has expired anyway. A rotation therefore never invalidates a token:
tokens signed by the previous key keep verifying everywhere until they expire, and the new
key is published ``key_publish_lead_seconds`` before it signs, so every signing replica (which
re-reads the ring every ``key_reload_seconds``) and every verifier knows it before the first
token names it. Private parts are stored encrypted with the key passphrase and erased once a
key no longer signs. Changes to the ring take a transaction-scoped advisory lock, so replicas
starting together or a rotation during a start cannot make two keys current.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK
from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from iot_common.auth import MAX_TOKEN_LIFETIME_SECONDS
from signing.config import SigningSettings
from signing.models import SigningKeyRecord
from signing.security import SigningKey

log = logging.getLogger(__name__)

#: Longest lifetime of a token, hence how long a retired key stays published.
RETENTION = timedelta(seconds=MAX_TOKEN_LIFETIME_SECONDS)
#: pg_advisory_xact_lock id serialising changes to the key ring ("SIGNKEYS").
_RING_LOCK = 0x5349474E4B455953
_KEY_BITS = 2048


class KeyRingError(RuntimeError):
    """The key ring cannot be used (empty, or a key cannot be decrypted); the message says why."""


@dataclass(frozen=True, slots=True)
class RingKey:
    """A key of the ring as one process holds it: the private part only while it may sign."""

    kid: str
    jwk: dict[str, str]
    active_from: datetime
    retired_at: datetime | None
    private: SigningKey | None

    def signs_at(self, now: datetime) -> bool:
        return self.active_from <= now and (self.retired_at is None or now < self.retired_at)

    def published_at(self, now: datetime) -> bool:
        return self.retired_at is None or now < self.retired_at + RETENTION


class KeyRing:
    """This process's copy of the key ring, re-read with :meth:`reload`."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], passphrase: str) -> None:
        self._sessions = sessions
        self._passphrase = passphrase.encode()
        self._keys: list[RingKey] = []

    async def reload(self) -> None:
        """Read the ring from PostgreSQL, decrypting the keys that sign now or next."""
        async with self._sessions() as session:
            rows = (await session.scalars(select(SigningKeyRecord))).all()
        now = datetime.now(UTC)
        keys = []
        for row in rows:
            private = None
            if row.private_pem and (row.retired_at is None or now < row.retired_at):
                private = SigningKey(kid=row.kid, private_key=self._decrypt(row))
            keys.append(RingKey(row.kid, row.public_jwk, row.active_from, row.retired_at, private))
        if not any(k.private is not None for k in keys):
            raise KeyRingError("the key ring holds no usable signing key: run `signing migrate`")
        self._keys = sorted(keys, key=lambda k: k.active_from)

    def _decrypt(self, row: SigningKeyRecord) -> rsa.RSAPrivateKey:
        assert row.private_pem is not None
        try:
            key = serialization.load_pem_private_key(
                row.private_pem.encode(), password=self._passphrase
            )
        except (ValueError, TypeError) as exc:
            raise KeyRingError(
                f"cannot decrypt signing key {row.kid}: SIGNING_KEY_PASSPHRASE is not the "
                "passphrase it was stored with (with a new passphrase, `signing rotate-key "
                "--revoke-previous` starts over)"
            ) from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyRingError(f"signing key {row.kid} is not an RSA key")
        return key

    def signing_key(self, now: datetime | None = None) -> SigningKey:
        """The key that signs at ``now``: the newest whose signing window has begun."""
        now = now or datetime.now(UTC)
        usable = [k for k in self._keys if k.private is not None and k.active_from <= now]
        current = [k for k in usable if k.signs_at(now)] or usable
        if not current or current[-1].private is None:
            raise KeyRingError("no signing key is active: run `signing migrate`")
        return current[-1].private

    def published(self, now: datetime | None = None) -> list[dict[str, str]]:
        """The JWKS ``keys``: the keys that sign now or next, and those retired recently."""
        now = now or datetime.now(UTC)
        return [k.jwk for k in reversed(self._keys) if k.published_at(now)]

    def public_keys(self, now: datetime | None = None) -> dict[str, Any]:
        return {jwk["kid"]: PyJWK.from_dict(jwk).key for jwk in self.published(now)}


@dataclass(frozen=True, slots=True)
class Rotation:
    """What ``rotate`` did, for the operator."""

    new_kid: str
    signs_from: datetime
    previous_kid: str | None
    previous_verifies_until: datetime | None


def _encrypt(key: rsa.RSAPrivateKey, passphrase: str) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    ).decode()


async def _lock(session: AsyncSession) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _RING_LOCK})


async def _add_current(
    session: AsyncSession, key: SigningKey, *, passphrase: str, active_from: datetime
) -> str | None:
    """Make ``key`` the newest key from ``active_from``; the kid of the key it follows."""
    previous = await session.scalar(
        select(SigningKeyRecord.kid).where(SigningKeyRecord.retired_at.is_(None))
    )
    await session.execute(
        update(SigningKeyRecord)
        .where(SigningKeyRecord.retired_at.is_(None))
        .values(retired_at=active_from)
    )
    session.add(
        SigningKeyRecord(
            kid=key.kid,
            private_pem=_encrypt(key.private_key, passphrase),
            public_jwk=key.public_jwk(),
            active_from=active_from,
        )
    )
    return previous


async def _prune(session: AsyncSession, now: datetime) -> None:
    """Forget keys retired longer ago than the longest token lifetime; erase unused secrets."""
    await session.execute(
        delete(SigningKeyRecord).where(SigningKeyRecord.retired_at < now - RETENTION)
    )
    await session.execute(
        update(SigningKeyRecord)
        .where(SigningKeyRecord.retired_at <= now, SigningKeyRecord.private_pem.is_not(None))
        .values(private_pem=None)
    )


def _generate() -> SigningKey:
    return SigningKey.of(rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS))


def _load_pem(pem: bytes, kid: str | None) -> SigningKey:
    loaded = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise KeyRingError("the configured signing key is not an RSA private key")
    return SigningKey.of(loaded, kid)


async def ensure_key(
    sessions: async_sessionmaker[AsyncSession],
    settings: SigningSettings,
    *,
    now: datetime | None = None,
) -> None:
    """Give the ring a current key (at start and in ``signing migrate``).

    A configured ``private_key_pem`` the ring has never held becomes the current key at once
    (the previous one stays published). An empty ring takes in the key file of an earlier
    version if there is one, and otherwise a generated key.
    """
    now = now or datetime.now(UTC)
    passphrase = settings.key_passphrase.get_secret_value()
    async with sessions() as session, session.begin():
        await _lock(session)
        kids = set((await session.scalars(select(SigningKeyRecord.kid))).all())
        key: SigningKey | None = None
        if settings.private_key_pem is not None:
            key = _load_pem(settings.private_key_pem.get_secret_value().encode(), settings.key_id)
            if key.kid in kids:
                key = None
        elif not kids:
            legacy = settings.key_file.expanduser()
            key = _load_pem(legacy.read_bytes(), settings.key_id) if legacy.is_file() else None
            key = key or _generate()
        if key is not None:
            previous = await _add_current(session, key, passphrase=passphrase, active_from=now)
            log.info("signing key %s is current (was %s)", key.kid, previous)
        await _prune(session, now)


async def rotate(
    sessions: async_sessionmaker[AsyncSession],
    settings: SigningSettings,
    *,
    now: datetime | None = None,
    revoke_previous: bool = False,
) -> Rotation:
    """Add a new key that signs after the publication lead; the previous one keeps verifying.

    ``revoke_previous`` is for a key that leaked: the new key signs at once and every earlier
    key is unpublished, so their tokens (and any forged with them) are refused everywhere
    within a JWKS refresh; everyone signs in again.
    """
    now = now or datetime.now(UTC)
    lead = timedelta(seconds=0 if revoke_previous else settings.key_publish_lead_seconds)
    key = _generate()
    async with sessions() as session, session.begin():
        await _lock(session)
        previous = await _add_current(
            session,
            key,
            passphrase=settings.key_passphrase.get_secret_value(),
            active_from=now + lead,
        )
        if revoke_previous:
            await session.flush()
            await session.execute(
                update(SigningKeyRecord)
                .where(SigningKeyRecord.kid != key.kid)
                .values(retired_at=now - RETENTION - timedelta(seconds=1))
            )
        await _prune(session, now)
    log.info("rotated signing keys: %s signs from %s (was %s)", key.kid, now + lead, previous)
    return Rotation(
        new_kid=key.kid,
        signs_from=now + lead,
        previous_kid=previous,
        previous_verifies_until=None if revoke_previous else now + lead + RETENTION,
    )
