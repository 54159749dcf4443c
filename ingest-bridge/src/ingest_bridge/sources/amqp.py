"""AMQP (RabbitMQ) sources: a prefetch-limited, batching queue consumer, and telemetry on it.

Messages are collected into batches as they arrive, handed to a handler, and acknowledged
only after the handler returned (i.e. after Kafka acknowledged what they became). A handler
failure requeues the batch.

In flight is bounded twice: the channel's prefetch bounds the messages, and their bytes are
bounded by :attr:`AmqpBatchConsumer.max_in_flight_bytes`. RabbitMQ does not implement the
prefetch *size* of AMQP 0-9-1, and it pushes a whole prefetch at once, so the bytes are bounded
through the prefetch count itself: it is ``max_in_flight_bytes`` divided by the largest message
recently seen (at first the broker's ``max_message_size``, so the very first deliveries cannot
overshoot), capped at ``prefetch``; a larger message lowers it at once, smaller ones let it grow
back batch by batch. Should the bytes still reach the bound, deliveries pause (prefetch 1) until
acks bring them under half of it. The channel's prefetch is global, so each change applies to
the running consumer. Overshoot is possible only when message sizes jump by more than the
prefetch allows, by at most one prefetch of messages of the broker's ``max_message_size``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from aio_pika.exceptions import ChannelPreconditionFailed
from aiormq.exceptions import ChannelAccessRefused

from ingest_bridge import metrics
from ingest_bridge.pipeline import Inbound, Pipeline
from iot_common.rabbitmq import device_from_routing_key
from iot_common.telemetry import DeadLetterReason as R

log = logging.getLogger(__name__)

Handler = Callable[[list[AbstractIncomingMessage]], Awaitable[None]]


class AmqpBatchConsumer:
    """Consumes ``queue`` (bound to a topic ``exchange``) in batches with manual acks."""

    def __init__(
        self,
        *,
        url: str,
        exchange: str,
        queue: str,
        binding_key: str,
        handler: Handler,
        prefetch: int = 1000,
        max_batch_messages: int = 1000,
        max_concurrent_batches: int = 4,
        max_in_flight_bytes: int = 16 * 1024 * 1024,
        max_batch_bytes: int = 1024 * 1024,
        max_message_size: int = 1024 * 1024,
        name: str = "amqp",
    ) -> None:
        self.url = url
        self.exchange_name = exchange
        self.queue_name = queue
        self.binding_key = binding_key
        self.handler = handler
        self.prefetch = prefetch
        self.max_batch = max_batch_messages
        self.max_concurrent = max_concurrent_batches
        self.max_in_flight_bytes = max_in_flight_bytes
        self.max_batch_bytes = max_batch_bytes
        self.name = name
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._pending: list[AbstractIncomingMessage] = []
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.in_flight = 0
        self.in_flight_bytes = 0
        #: Deliveries held back because the bytes in flight reached their bound.
        self.paused = False
        #: The largest message recently seen (decays); sizes the prefetch.
        self._size_hint = max(1, max_message_size)
        self._qos_applied = 0
        self._qos_task: asyncio.Task[None] | None = None
        self._gauge = metrics.IN_FLIGHT.labels(name)

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    @property
    def saturated(self) -> bool:
        # The channel's prefetch is the bound: RabbitMQ simply stops delivering at it, which
        # is normal under load rather than a reason to report not-ready.
        return False

    async def run(self) -> None:
        """Connect (retrying until RabbitMQ answers) and consume until :meth:`close`."""
        backoff = 0.2
        while not self._closing:
            try:
                self._connection = await aio_pika.connect_robust(self.url)
                break
            except Exception as exc:
                log.warning("%s: RabbitMQ not reachable (%s); retrying", self.name, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        if self._connection is None:
            return
        first: AbstractChannel = await self._connection.channel()
        self._qos_applied = self._wanted_prefetch()
        await self._set_qos(first, self._qos_applied)
        channel, exchange = await self._exchange(first)
        self._channel = channel
        queue = await channel.declare_queue(self.queue_name, durable=True)
        await queue.bind(exchange, routing_key=self.binding_key)
        await queue.consume(self._on_message, no_ack=False)
        log.info(
            "%s: consuming %s (exchange %s, key %s)",
            self.name,
            self.queue_name,
            self.exchange_name,
            self.binding_key,
        )

    async def _exchange(self, channel: AbstractChannel) -> tuple[AbstractChannel, AbstractExchange]:
        try:
            ex = await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            return channel, ex
        except (ChannelPreconditionFailed, ChannelAccessRefused):
            # Declared by its owner (with other flags), or ours may not configure exchanges
            # (the bridge's service account may not): use it as it is.
            assert self._connection is not None
            channel = await self._connection.channel()
            await self._set_qos(channel, self._qos_applied)
            return channel, await channel.get_exchange(self.exchange_name, ensure=True)

    @staticmethod
    async def _set_qos(channel: AbstractChannel, prefetch: int) -> None:
        # Global (channel-wide) so a change applies to the running consumer at once; a
        # per-consumer prefetch only applies to consumers started after it.
        await channel.set_qos(prefetch_count=prefetch, global_=True)

    async def close(self) -> None:
        self._closing = True
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._pending.append(message)
        self.in_flight += 1
        size = len(message.body)
        self.in_flight_bytes += size
        self._gauge.set(self.in_flight)
        if size > self._size_hint:
            self._size_hint = size
            self._update_qos()
        if not self.paused and self.in_flight_bytes >= self.max_in_flight_bytes:
            self.paused = True
            self._update_qos()
        if self._active < self.max_concurrent:
            # Let the messages already on the wire join this batch before it is cut.
            asyncio.get_running_loop().call_soon(self._kick)

    def _update_qos(self) -> None:
        if self._qos_task is None or self._qos_task.done():
            self._qos_task = asyncio.create_task(self._apply_qos())

    def _wanted_prefetch(self) -> int:
        if self.paused:
            return 1
        return max(1, min(self.prefetch, self.max_in_flight_bytes // self._size_hint))

    async def _apply_qos(self) -> None:
        """Bring the channel's prefetch to what the state asks for (the latest state wins)."""
        while (want := self._wanted_prefetch()) != self._qos_applied:
            channel = self._channel
            if channel is None or channel.is_closed:
                return
            try:
                await self._set_qos(channel, want)
            except Exception as exc:
                log.warning("%s: could not change the prefetch: %s", self.name, exc)
                return
            self._qos_applied = want
            log.debug(
                "%s: prefetch %d (%d bytes in flight, messages up to %d bytes)",
                self.name,
                want,
                self.in_flight_bytes,
                self._size_hint,
            )

    def _cut(self) -> list[AbstractIncomingMessage]:
        """The next batch: up to ``max_batch`` messages and ``max_batch_bytes`` (at least one)."""
        size = n = 0
        for msg in self._pending[: self.max_batch]:
            size += len(msg.body)
            if n and size > self.max_batch_bytes:
                break
            n += 1
        batch = self._pending[:n]
        del self._pending[:n]
        return batch

    def _kick(self) -> None:
        while self._pending and self._active < self.max_concurrent:
            batch = self._cut()
            self._active += 1
            task = asyncio.create_task(self._process(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, batch: list[AbstractIncomingMessage]) -> None:
        try:
            try:
                await self.handler(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: batch of %d failed; requeueing", self.name, len(batch))
                for msg in batch:
                    with contextlib.suppress(Exception):
                        await msg.nack(requeue=True)
                return
            for msg in batch:
                try:
                    await msg.ack()
                except Exception as exc:
                    # The channel died meanwhile: RabbitMQ redelivers (at-least-once).
                    log.debug("%s: ack failed: %s", self.name, exc)
        finally:
            self._active -= 1
            self.in_flight -= len(batch)
            self.in_flight_bytes -= sum(len(m.body) for m in batch)
            self._gauge.set(self.in_flight)
            if self.paused and self.in_flight_bytes <= self.max_in_flight_bytes // 2:
                self.paused = False
            # Smaller messages let the prefetch grow back, halving the hint per batch at most.
            largest = max((len(m.body) for m in batch), default=1)
            self._size_hint = max(1, largest, self._size_hint // 2)
            if self._wanted_prefetch() != self._qos_applied:
                self._update_qos()
            self._kick()

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "in_flight": self.in_flight,
            "in_flight_bytes": self.in_flight_bytes,
            "paused": self.paused,
        }


def may_write(user_id: str | None, device_id: str) -> bool:
    """Whether the broker-proven sender ``user_id`` may write ``device_id``'s telemetry.

    RabbitMQ refuses a ``user_id`` that is not the publishing connection's user, so it names
    the account that sent the message; a device's account is named after the device.
    """
    return user_id is not None and user_id == device_id


class AmqpTelemetrySource(AmqpBatchConsumer):
    """Telemetry from the ``telemetry`` exchange (routing key ``device.{device_id}``).

    A reading is taken only from the device's own account: its ``user_id`` property (which
    the broker validated) must name the device of the routing key. Anything else — no
    ``user_id``, or another account's — is dead-lettered ``unauthorized`` and never stored,
    whatever permissions the broker was given.
    """

    def __init__(self, *, pipeline: Pipeline, **kw: Any) -> None:
        kw.setdefault("binding_key", "device.*")
        kw.setdefault("name", "amqp")
        super().__init__(handler=self._handle, **kw)
        self.pipeline = pipeline

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        inbound = []
        for msg in batch:
            key = msg.routing_key or ""
            did = device_from_routing_key(key)
            if did is None:
                inbound.append(Inbound(None, msg.body, f"unexpected routing key {key[:200]!r}"))
            elif not may_write(msg.user_id, did):
                sender = "no user_id" if msg.user_id is None else f"user {msg.user_id[:100]!r}"
                detail = f"{sender} may not write device {did}"
                inbound.append(Inbound(did, msg.body, detail, refused=R.UNAUTHORIZED))
            else:
                inbound.append(Inbound(did, msg.body))
        await self.pipeline.submit("amqp", inbound)
