"""Device accounts on the brokers: the change rows each API change commits, sealed tokens.

A device authenticates on MQTT and AMQP with the same credential as on HTTP (username = device
id, password = device token). device-management is the only writer of those broker accounts:
each credential change commits a :class:`~device_management.models.BrokerChange` row per broker
in the same transaction as the change itself, and a provisioner per broker
(:mod:`device_management.provisioner`) applies them. A broker outage therefore loses nothing,
and a device-management outage never touches devices already provisioned (the brokers keep
their accounts).

The token is needed in clear only by Mosquitto's control API, so its row carries it sealed
with AES-GCM under a key derived from the Mosquitto admin password: whoever holds that password
can already set any device's MQTT password, so the seal adds no new secret and a database dump
alone reveals no token. The row is deleted as soon as the broker has applied it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from device_management.models import BrokerChange, Device

MQTT = "mqtt"
AMQP = "amqp"

CREDENTIAL = "credential"
ACTIVE = "active"
DELETE = "delete"
#: Publish the device's desired configuration (retained, on its own topic): MQTT only.
CONFIG = "config"


class TokenSeal:
    """AES-GCM sealing of device tokens in transit through the database."""

    def __init__(self, key_material: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"iot broker change token"
        ).derive(key_material.encode())
        self._aead = AESGCM(key)

    def seal(self, device_id: uuid.UUID, token: str) -> bytes:
        nonce = os.urandom(12)
        # The device id is authenticated with it: a sealed token cannot be moved to another row.
        return nonce + self._aead.encrypt(nonce, token.encode(), device_id.bytes)

    def open(self, device_id: uuid.UUID, sealed: bytes) -> str:
        return self._aead.decrypt(sealed[:12], sealed[12:], device_id.bytes).decode()


#: How a target's row carries a new token.
SecretEncoder = Callable[[uuid.UUID, str], bytes]


class Wakeable(Protocol):
    def wake(self) -> None: ...


class BrokerAccounts:
    """Records credential changes for every enabled broker, in the caller's transaction."""

    def __init__(
        self,
        encoders: Mapping[str, SecretEncoder],
        *,
        sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self._encoders = dict(encoders)
        self._sessionmaker = sessionmaker
        self._provisioners: list[Wakeable] = []

    @property
    def targets(self) -> list[str]:
        return list(self._encoders)

    def attach(self, provisioners: Sequence[Wakeable]) -> None:
        self._provisioners = list(provisioners)

    def record(
        self, session: AsyncSession, device: Device, action: str, *, token: str | None = None
    ) -> None:
        now = datetime.now(UTC)
        for target, encode in self._encoders.items():
            if action == CONFIG and target != MQTT:
                continue  # the configuration is delivered over MQTT (HTTP devices poll)
            session.add(
                BrokerChange(
                    target=target,
                    device_id=device.id,
                    action=action,
                    secret=encode(device.id, token) if token is not None else None,
                    active=device.active,
                    created_at=now,
                    attempts=0,
                    failed_at=None,
                    last_error=None,
                )
            )

    def wake(self) -> None:
        """After a commit: let the provisioners apply the new rows now."""
        for provisioner in self._provisioners:
            provisioner.wake()

    async def wait_applied(self, device_id: uuid.UUID, *, within: float) -> bool:
        """Whether every broker applied the device's changes within ``within`` seconds."""
        if self._sessionmaker is None or not self._encoders:
            return True
        return await wait_applied(self._sessionmaker, device_id, within=within)


async def wait_applied(
    sessionmaker: async_sessionmaker[AsyncSession],
    device_id: uuid.UUID,
    *,
    within: float,
    interval: float = 0.02,
) -> bool:
    """Whether every broker applied the device's changes within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        async with sessionmaker() as session:
            pending = (
                await session.execute(
                    select(func.count())
                    .select_from(BrokerChange)
                    .where(BrokerChange.device_id == device_id, BrokerChange.failed_at.is_(None))
                )
            ).scalar_one()
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
