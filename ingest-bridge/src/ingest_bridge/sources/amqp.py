"""AMQP (RabbitMQ) sources: a prefetch-limited, batching queue consumer, and telemetry on it.

Messages are collected into batches as they arrive, handed to a handler, and acknowledged
only after the handler returned (i.e. after Kafka acknowledged what they became). The
channel's prefetch bounds how many are in flight; a handler failure requeues the batch.
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

from ingest_bridge import metrics
from ingest_bridge.pipeline import Inbound, Pipeline

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
        self.name = name
        self._connection: AbstractRobustConnection | None = None
        self._pending: list[AbstractIncomingMessage] = []
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.in_flight = 0
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
        await first.set_qos(prefetch_count=self.prefetch)
        channel, exchange = await self._exchange(first)
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
        except ChannelPreconditionFailed:
            # Declared by its owner with other flags: use it as it is.
            assert self._connection is not None
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=self.prefetch)
            return channel, await channel.get_exchange(self.exchange_name, ensure=True)

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
        self._gauge.set(self.in_flight)
        if self._active < self.max_concurrent:
            # Let the messages already on the wire join this batch before it is cut.
            asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        while self._pending and self._active < self.max_concurrent:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
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
            self._gauge.set(self.in_flight)
            self._kick()

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "in_flight": self.in_flight}


def device_from_routing_key(key: str) -> str | None:
    """``device.{device_id}`` → device id."""
    if key.startswith("device.") and len(key) > 7:
        did = key[7:]
        if "." not in did:
            return did
    return None


class AmqpTelemetrySource(AmqpBatchConsumer):
    """Telemetry from the ``telemetry`` exchange (routing key ``device.{device_id}``)."""

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
            else:
                inbound.append(Inbound(did, msg.body))
        await self.pipeline.submit("amqp", inbound)
