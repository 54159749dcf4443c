"""The outbox relay: publishes committed events to RabbitMQ in order, then marks them sent.

The API writes each event into ``t_outbox`` in the same transaction as the change, so an event
exists exactly when its change does. This relay (a background task of the app) reads unsent rows
in id order, publishes them to the topic exchange as persistent messages with publisher
confirms, and marks the confirmed ones sent. Replicas take turns through an advisory lock, so
one device's events go out in their commit order. While RabbitMQ is unreachable the rows simply
wait; the relay reconnects with backoff and drains them once it is back.

Delivery is at least once in the worst case (a connection lost between the broker's confirm
and our commit re-publishes that batch); every message carries ``message_id`` = event id so
consumers can drop the rare duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from prometheus_client import Counter, Gauge
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from device_management.models import OutboxMessage
from device_management.relay import Relay

log = logging.getLogger(__name__)

#: pg advisory lock key: one relay at a time publishes (keeps per-device order across replicas).
RELAY_LOCK_KEY = 0x0DE71CE5

EVENTS_PUBLISHED = Counter("device_events_published_total", "Device events published")
PUBLISH_FAILURES = Counter("device_events_publish_failures_total", "Failed relay attempts")
OUTBOX_PENDING = Gauge("device_outbox_pending", "Events committed but not yet published")


class _Publisher:
    """One RabbitMQ connection and confirm-mode channel, opened on demand."""

    def __init__(self, url: str, exchange: str, *, connect_timeout: float, publish_timeout: float):
        self._url = url
        self._exchange_name = exchange
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    @property
    def connected(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def connect(self) -> None:
        if self.connected:
            return
        await self.close()
        # A plain (not robust) connection: reconnecting is this relay's job, so a lost
        # connection surfaces as an error here instead of publishes hanging on a reconnect.
        self._connection = await aio_pika.connect(self._url, timeout=self._connect_timeout)
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        log.info("outbox relay connected to RabbitMQ exchange %s", self._exchange_name)

    async def close(self) -> None:
        conn, self._connection, self._channel, self._exchange = self._connection, None, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)

    async def publish(self, rows: Sequence[OutboxMessage]) -> tuple[int, BaseException | None]:
        """Publish ``rows`` in order; returns how many leading rows were confirmed and the error.

        The publishes are pipelined: aiormq serialises them on the channel in call order (the
        channel lock is FIFO), then the confirms are awaited together.
        """
        exchange = self._exchange
        if exchange is None:
            return 0, RuntimeError("not connected")
        tasks = [
            asyncio.ensure_future(
                exchange.publish(
                    aio_pika.Message(
                        row.body,
                        message_id=str(row.event_id),
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        timestamp=row.created_at,
                        type=row.routing_key,
                    ),
                    routing_key=row.routing_key,
                    timeout=self._publish_timeout,
                )
            )
            for row in rows
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        # A nack or a lost connection surfaces as an exception (aiormq's DeliveryError etc.).
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                return i, result
        return len(rows), None


class OutboxRelay(Relay):
    """Background task draining ``t_outbox`` to RabbitMQ; ``wake()`` after each commit."""

    name = "outbox relay"

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        rabbitmq_url: str,
        exchange: str,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        max_backoff: float = 5.0,
        connect_timeout: float = 5.0,
        publish_timeout: float = 10.0,
        retention_seconds: float = 86_400.0,
    ) -> None:
        super().__init__(
            poll_interval=poll_interval, max_backoff=max_backoff, failures=PUBLISH_FAILURES
        )
        self._sessionmaker = sessionmaker
        self._publisher = _Publisher(
            rabbitmq_url, exchange, connect_timeout=connect_timeout, publish_timeout=publish_timeout
        )
        self._batch = batch_size
        self._retention = retention_seconds
        self._next_purge = 0.0

    @property
    def connected(self) -> bool:
        return self._publisher.connected

    async def connect(self) -> None:
        await self._publisher.connect()

    async def disconnect(self) -> None:
        await self._publisher.close()

    async def housekeeping(self) -> None:
        await self._purge_sent()

    async def pending(self) -> int:
        async with self._sessionmaker() as session:
            n = (
                await session.execute(
                    select(func.count())
                    .select_from(OutboxMessage)
                    .where(OutboxMessage.sent_at.is_(None))
                )
            ).scalar_one()
        OUTBOX_PENDING.set(n)
        return int(n)

    async def _purge_sent(self) -> None:
        """Drop rows published longer ago than the retention (at most once a minute)."""
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + 60.0
        cutoff = datetime.now(UTC) - timedelta(seconds=self._retention)
        async with self._sessionmaker() as session, session.begin():
            await session.execute(
                delete(OutboxMessage).where(
                    OutboxMessage.sent_at.is_not(None), OutboxMessage.sent_at < cutoff
                )
            )

    async def drain_once(self) -> int:
        """Publish one batch; returns how many were sent (0 = nothing to do or not our turn)."""
        self._wake.clear()
        async with self._sessionmaker() as session, session.begin():
            ours = (
                await session.execute(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": RELAY_LOCK_KEY}
                )
            ).scalar_one()
            if not ours:
                return 0
            rows = (
                (
                    await session.execute(
                        select(OutboxMessage)
                        .where(OutboxMessage.sent_at.is_(None))
                        .order_by(OutboxMessage.id)
                        .limit(self._batch)
                    )
                )
                .scalars()
                .all()
            )
            if not rows:
                OUTBOX_PENDING.set(0)
                return 0
            confirmed, error = await self._publisher.publish(rows)
            now = datetime.now(UTC)
            if confirmed:
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_([r.id for r in rows[:confirmed]]))
                    .values(sent_at=now)
                )
            if error is not None:
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == rows[confirmed].id)
                    .values(attempts=OutboxMessage.attempts + 1)
                )
        EVENTS_PUBLISHED.inc(confirmed)
        if error is not None:
            raise error if isinstance(error, Exception) else RuntimeError(repr(error))
        return confirmed
