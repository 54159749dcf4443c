"""Device users on RabbitMQ, kept through the broker's management HTTP API.

One RabbitMQ user per device (username = device id, password = its device token) in the
platform's virtual host, with the device permissions of :mod:`iot_common.rabbitmq` (publish to
the telemetry exchange with routing key ``device.<own id>``, nothing else). The change rows for
this broker carry the token already hashed the way RabbitMQ stores it
(``rabbit_password_hashing_sha256``), so no clear token ever waits in the database for AMQP.

What each plan becomes:

- a credential (first token or rotation): the user with its new password hash and, when the
  device is active, its permissions — for the whole batch in one definitions import; then the
  user's open connections are closed, so an old token stops working at once (RabbitMQ checks a
  password only when a connection opens);
- deactivation: the permissions are revoked and the connections closed (the user stays, so a
  reactivation needs no token); reactivation grants them again;
- deletion: the user is deleted (the broker closes its connections itself).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

from device_management.broker_accounts import ACTIVE, CREDENTIAL, DELETE
from device_management.provisioner import Plan
from iot_common import rabbitmq
from iot_common.rabbitmq import Management, ManagementError

log = logging.getLogger(__name__)


def encode_secret(device_id: uuid.UUID, token: str) -> bytes:
    """What an AMQP change row carries: the token as RabbitMQ will store it (salted hash)."""
    return rabbitmq.password_hash(token).encode()


class AmqpApplier:
    """Applies folded credential plans to RabbitMQ device users (see the module docstring)."""

    def __init__(
        self,
        management: Callable[[], Management],
        *,
        vhost: str,
        telemetry_exchange: str,
        concurrency: int = 8,
    ) -> None:
        self._factory = management
        self._api: Management | None = None
        self.vhost = vhost
        self.telemetry_exchange = telemetry_exchange
        self._perms, self._topic = rabbitmq.device_permissions(telemetry_exchange)
        self._limit = asyncio.Semaphore(concurrency)

    @property
    def connected(self) -> bool:
        return self._api is not None

    async def connect(self) -> None:
        api = self._factory()
        try:
            await api.put_vhost(self.vhost)  # idempotent; also proves the API answers
        except BaseException:
            await api.aclose()
            raise
        self._api = api
        log.info("keeping device users on RabbitMQ (vhost %s)", self.vhost)

    async def close(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            await api.aclose()

    async def apply(self, plans: list[Plan]) -> dict[uuid.UUID, str]:
        api = self._api
        if api is None:
            raise ConnectionError("not connected to RabbitMQ's management API")
        refused: dict[uuid.UUID, str] = {}
        creds = [p for p in plans if p.kind == CREDENTIAL]
        if creds:
            await api.import_definitions(
                rabbitmq.device_definitions(
                    self.vhost,
                    self.telemetry_exchange,
                    ((str(p.device_id), (p.secret or b"").decode(), p.active) for p in creds),
                )
            )
        deleted = [str(p.device_id) for p in plans if p.kind == DELETE]
        await api.delete_users(deleted)

        async def each(plan: Plan, work: Callable[[str], Awaitable[None]]) -> None:
            async with self._limit:
                try:
                    await work(str(plan.device_id))
                except ManagementError as exc:
                    refused[plan.device_id] = f"{plan.kind}: {exc}"

        async def after_credential(name: str, *, active: bool) -> None:
            if not active:
                # Imported without permissions; one kept from an earlier grant must go too.
                await api.revoke(self.vhost, name)
            await api.close_connections(name)

        async def set_active(name: str, *, active: bool) -> None:
            if not await api.user_exists(name):
                return  # a device without a token yet (or deleted meanwhile): nothing to do
            if active:
                await api.grant(self.vhost, name, self._perms, self._topic)
            else:
                await api.revoke(self.vhost, name)
                await api.close_connections(name)

        jobs = []
        for plan in plans:
            if plan.kind == CREDENTIAL:
                jobs.append(each(plan, partial(after_credential, active=plan.active)))
            elif plan.kind == ACTIVE:
                jobs.append(each(plan, partial(set_active, active=plan.active)))
        await asyncio.gather(*jobs)
        return refused
