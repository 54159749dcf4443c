"""Provisioners: apply committed credential changes to one broker's device accounts, in order.

One :class:`Provisioner` per broker drains that broker's rows of ``t_broker_changes`` (see
:mod:`device_management.broker_accounts`) in id order, one replica at a time (an advisory lock
per broker). A batch is folded per device to the fewest commands that reach its final state
(a device registered and given a token during an outage costs one command, not two); a row is
deleted once its broker applied it, and marked failed (its secret wiped) only when the broker
refuses it outright. While the broker is unreachable the rows wait and the relay retries with
backoff, so nothing is lost; the broker keeps every account it has, so a device-management
outage never disconnects a device.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiomqtt
from cryptography.exceptions import InvalidTag
from prometheus_client import Counter, Gauge
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from device_management.broker_accounts import ACTIVE, CONFIG, CREDENTIAL, DELETE, TokenSeal
from device_management.models import BrokerChange, Device
from device_management.relay import Relay
from iot_common import dynsec
from iot_common.device_config import DesiredConfig, DeviceConfig, config_topic

log = logging.getLogger(__name__)

#: pg advisory lock keys: one provisioner per broker at a time (keeps per-device order).
LOCK_KEYS = {"mqtt": 0x0DE71CE6, "amqp": 0x0DE71CE7}

APPLIED = Counter(
    "device_broker_changes_applied_total", "Credential changes applied to a broker", ["target"]
)
REFUSED = Counter(
    "device_broker_changes_refused_total", "Credential changes a broker refused", ["target"]
)
SYNC_FAILURES = Counter(
    "device_broker_sync_failures_total", "Failed attempts to reach a broker", ["target"]
)
PENDING = Gauge("device_broker_changes_pending", "Credential changes not applied yet", ["target"])


class ChangeRefused(Exception):
    """The broker refused a device's change for good (not an outage)."""


@dataclass
class Plan:
    """What one device's rows of a batch add up to."""

    device_id: uuid.UUID
    kind: str
    active: bool
    secret: bytes | None = None
    rows: list[int] = field(default_factory=list)
    #: Publish the desired configuration (retained) once the account commands are applied.
    config: bool = False
    #: That configuration as the device receives it (filled by the provisioner from the row
    #: of the device at apply time, so a batch of changes publishes only the latest).
    document: bytes | None = None


def fold(rows: Sequence[BrokerChange]) -> list[Plan]:
    """The final state each device's rows (in id order) ask for."""
    plans: dict[uuid.UUID, Plan] = {}
    for row in rows:
        plan = plans.get(row.device_id)
        if plan is None:
            plan = plans[row.device_id] = Plan(row.device_id, row.action, row.active)
        elif (
            row.action == DELETE
            or (row.action == CREDENTIAL and plan.kind != DELETE)
            # a config publication alone is no account command: any other action wins
            or (plan.kind == CONFIG and row.action != CONFIG)
        ):
            plan.kind = row.action
        if row.action == CONFIG:
            plan.config = True
        # An activation change keeps a pending credential (or deletion) and updates its flag.
        plan.active = row.active
        if row.action == CREDENTIAL:
            plan.secret = row.secret
        plan.rows.append(row.id)
    return list(plans.values())


class Applier(Protocol):
    """One broker's side: connection and the commands for a batch of plans."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, plans: list[Plan]) -> dict[uuid.UUID, str]:
        """Apply ``plans``; returns the refusal reason of each device the broker refused.

        Raises for an outage (nothing to conclude about the rows: they are retried).
        """


class Provisioner(Relay):
    """Background task applying one broker's rows of ``t_broker_changes``."""

    def __init__(
        self,
        *,
        target: str,
        applier: Applier,
        sessionmaker: async_sessionmaker[AsyncSession],
        batch_size: int = 200,
        poll_interval: float = 1.0,
        max_backoff: float = 5.0,
    ) -> None:
        super().__init__(
            poll_interval=poll_interval,
            max_backoff=max_backoff,
            failures=SYNC_FAILURES.labels(target),
        )
        self.name = f"{target} provisioner"
        self.target = target
        self.applier = applier
        self._sessionmaker = sessionmaker
        self._batch = batch_size

    @property
    def connected(self) -> bool:
        return self.applier.connected

    async def connect(self) -> None:
        if not self.applier.connected:
            await self.applier.connect()

    async def disconnect(self) -> None:
        await self.applier.close()

    async def housekeeping(self) -> None:
        async with self._sessionmaker() as session:
            n = (
                await session.execute(
                    select(func.count())
                    .select_from(BrokerChange)
                    .where(BrokerChange.target == self.target, BrokerChange.failed_at.is_(None))
                )
            ).scalar_one()
        PENDING.labels(self.target).set(n)

    async def drain_once(self) -> int:
        self._wake.clear()
        async with self._sessionmaker() as session, session.begin():
            ours = (
                await session.execute(
                    text("SELECT pg_try_advisory_xact_lock(:key)"),
                    {"key": LOCK_KEYS[self.target]},
                )
            ).scalar_one()
            if not ours:
                return 0
            rows = (
                (
                    await session.execute(
                        select(BrokerChange)
                        .where(BrokerChange.target == self.target, BrokerChange.failed_at.is_(None))
                        .order_by(BrokerChange.id)
                        .limit(self._batch)
                    )
                )
                .scalars()
                .all()
            )
            if not rows:
                PENDING.labels(self.target).set(0)
                return 0
            plans = fold(rows)
            await _load_documents(session, plans)
            try:
                refused = await self.applier.apply(plans)
            except Exception as exc:
                await self._count_attempt(rows[0].id, exc)
                raise
            failed_rows = [r for p in plans if p.device_id in refused for r in p.rows]
            done = [r.id for r in rows if r.id not in set(failed_rows)]
            if done:
                await session.execute(delete(BrokerChange).where(BrokerChange.id.in_(done)))
            now = datetime.now(UTC)
            for plan in plans:
                reason = refused.get(plan.device_id)
                if reason is None:
                    continue
                log.error(
                    "%s refused the change for device %s: %s", self.target, plan.device_id, reason
                )
                await session.execute(
                    update(BrokerChange)
                    .where(BrokerChange.id.in_(plan.rows))
                    .values(failed_at=now, secret=None, last_error=reason[:500])
                )
        APPLIED.labels(self.target).inc(len(done))
        REFUSED.labels(self.target).inc(len(failed_rows))
        return len(rows)

    async def _count_attempt(self, row_id: int, exc: BaseException) -> None:
        with contextlib.suppress(Exception):
            async with self._sessionmaker() as session, session.begin():
                await session.execute(
                    update(BrokerChange)
                    .where(BrokerChange.id == row_id)
                    .values(
                        attempts=BrokerChange.attempts + 1,
                        last_error=(str(exc) or type(exc).__name__)[:500],
                    )
                )


async def _load_documents(session: AsyncSession, plans: list[Plan]) -> None:
    """The current desired configuration of each plan that publishes one."""
    wanted = {p.device_id: p for p in plans if p.config and p.kind != DELETE}
    if not wanted:
        return
    devices = (await session.execute(select(Device).where(Device.id.in_(wanted)))).scalars()
    for device in devices:
        wanted[device.id].document = (
            DesiredConfig(
                device_id=str(device.id),
                version=device.config_version,
                config=DeviceConfig.model_validate(device.config),
            )
            .model_dump_json()
            .encode()
        )


# --- Mosquitto (dynamic security) ---------------------------------------------------------

#: Commands per control message. Mosquitto 2.0's plugin answers a message when all of its
#: commands are done, and every change rewrites the plugin's whole file (``dynsec__config_save``
#: after each command, batched or not): about 6 µs per client on the broker per change, so
#: ~60 ms a change with 10,000 devices. The broker also acknowledges (PUBACK) a control message
#: only once the plugin has run all of it. A message of 200 commands then went 12 s without an
#: answer, past the 10 s control timeout, and the batch was retried for ever (each retry's
#: ``setClientPassword`` follow-ups costing more again); 25 a message answers every ~1.5 s.
COMMANDS_PER_MESSAGE = 25


class DynsecControl:
    """device-management's connection to Mosquitto's dynamic-security control topic."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._ssl_context = ssl_context
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._timeout = timeout
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._reader is not None and not self._reader.done()

    async def connect(self) -> None:
        await self.close()
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self._username,
            password=self._password,
            # Unique per connection: two replicas (or a restart) never take each other over.
            identifier=f"{self._username}-{secrets.token_hex(8)}",
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=self._timeout,
            tls_context=self._ssl_context,
        )
        await client.__aenter__()
        try:
            await client.subscribe(dynsec.RESPONSE_TOPIC, qos=1)
        except BaseException:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            raise
        self._client = client
        self._reader = asyncio.create_task(self._read(client), name="dynsec-responses")
        log.info("connected to Mosquitto's dynamic-security control at %s", self._host)

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    continue
                try:
                    answers = json.loads(payload).get("responses", [])
                except ValueError:
                    continue
                for answer in answers:
                    fut = self._waiting.pop(str(answer.get("correlationData", "")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(answer)
        except aiomqtt.MqttError as exc:
            log.warning("dynamic-security control connection lost: %s", exc)
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("control connection lost"))
            self._waiting.clear()

    async def close(self) -> None:
        client, self._client = self._client, None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    async def publish_retained(self, topic: str, payload: bytes) -> None:
        """Publish (QoS 1, retained) as the admin account; an empty payload clears the topic."""
        client = self._client
        if client is None or not self.connected:
            raise ConnectionError("not connected to Mosquitto")
        await client.publish(topic, payload, qos=1, retain=True)

    async def send(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands (in order, :data:`COMMANDS_PER_MESSAGE` a message); their answers, in
        order. Raises :class:`TimeoutError` when no answer came for ``timeout`` seconds."""
        client = self._client
        if client is None or not self.connected:
            raise ConnectionError("not connected to Mosquitto")
        loop = asyncio.get_running_loop()
        futures = []
        tagged = []
        async with self._lock:
            for cmd in commands:
                cid = secrets.token_hex(8)
                fut: asyncio.Future[dict[str, Any]] = loop.create_future()
                self._waiting[cid] = fut
                futures.append(fut)
                tagged.append({**cmd, "correlationData": cid})
            try:
                for i in range(0, len(tagged), COMMANDS_PER_MESSAGE):
                    body = json.dumps({"commands": tagged[i : i + COMMANDS_PER_MESSAGE]})
                    await client.publish(dynsec.CONTROL_TOPIC, body, qos=1)
                # The deadline is for silence, not for the whole batch: a large batch on a
                # broker with many clients is slow but answers message after message.
                pending: set[asyncio.Future[dict[str, Any]]] = set(futures)
                while pending:
                    done, pending = await asyncio.wait(
                        pending, timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                    if not done:
                        raise TimeoutError(
                            f"Mosquitto answered {len(futures) - len(pending)} of "
                            f"{len(futures)} control commands, then nothing for {self._timeout:g}s"
                        )
                return [f.result() for f in futures]
            finally:
                for cmd in tagged:
                    self._waiting.pop(cmd["correlationData"], None)


class MqttApplier:
    """Device clients on Mosquitto: created with their first token, re-keyed, (dis/en)abled,
    deleted; each command also disconnects the device where it changes what it may do."""

    def __init__(self, control: DynsecControl, seal: TokenSeal, *, topic_prefix: str = "") -> None:
        self.control = control
        self.seal = seal
        self.topic_prefix = topic_prefix

    @property
    def connected(self) -> bool:
        return self.control.connected

    async def connect(self) -> None:
        await self.control.connect()

    async def close(self) -> None:
        await self.control.close()

    async def apply(self, plans: list[Plan]) -> dict[uuid.UUID, str]:
        refused: dict[uuid.UUID, str] = {}
        tokens: dict[uuid.UUID, str] = {}
        first: list[tuple[Plan, dict[str, Any]]] = []
        for plan in plans:
            did = str(plan.device_id)
            if plan.kind == DELETE:
                first.append((plan, dynsec.delete_command(did)))
            elif plan.kind == CREDENTIAL:
                try:
                    token = tokens[plan.device_id] = self.seal.open(
                        plan.device_id, plan.secret or b""
                    )
                except (InvalidTag, ValueError):
                    refused[plan.device_id] = "sealed token unreadable (key changed?)"
                    continue
                first.append((plan, dynsec.create_device_command(did, token)))
                if not plan.active:
                    first.append((plan, dynsec.enable_command(did, False)))
            elif plan.kind == ACTIVE:
                first.append((plan, dynsec.enable_command(did, plan.active)))
        answers = await self.control.send([c for _, c in first])
        follow: list[tuple[Plan, dict[str, Any]]] = []
        for (plan, cmd), answer in zip(first, answers, strict=True):
            error = answer.get("error")
            if not error:
                continue
            if cmd["command"] == "createClient" and error == dynsec.ALREADY_EXISTS:
                # A device re-keyed (or a retry after the create went through): new password,
                # and the enabled flag as of this change.
                did = str(plan.device_id)
                follow.append((plan, dynsec.set_password_command(did, tokens[plan.device_id])))
                follow.append((plan, dynsec.enable_command(did, plan.active)))
            elif error != dynsec.NOT_FOUND or cmd["command"] == "createClient":
                refused[plan.device_id] = f"{cmd['command']}: {error}"
            # NOT_FOUND for delete/enable/disable: a device without a client (no token yet).
        if follow:
            for (plan, cmd), answer in zip(
                follow, await self.control.send([c for _, c in follow]), strict=True
            ):
                if answer.get("error"):
                    refused[plan.device_id] = f"{cmd['command']}: {answer['error']}"
        # Desired configurations after the accounts: retained, so the device gets it on
        # every connect; a deleted device's is cleared (nobody could read it, but it would
        # outlive the device in the broker's store).
        for plan in plans:
            if plan.device_id in refused:
                continue
            topic = config_topic(str(plan.device_id), self.topic_prefix)
            if plan.kind == DELETE:
                await self.control.publish_retained(topic, b"")
            elif plan.document is not None:
                await self.control.publish_retained(topic, plan.document)
        return refused
