"""Device events: RabbitMQ ``device.events`` → Kafka ``device.events`` (same JSON bytes).

Each event is keyed by its device id. A body that is not a ``DeviceEvent`` is dead-lettered
(``undecodable``) rather than forwarded. Lifecycle events also drop the device from the
bridge's local lookup cache, so a deactivation or a rotated token takes effect at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from aio_pika.abc import AbstractIncomingMessage

from ingest_bridge import metrics
from ingest_bridge.devices import DeviceDirectory
from ingest_bridge.sink import KafkaSink, Record
from ingest_bridge.sources.amqp import AmqpBatchConsumer
from iot_common.events import device_event_decoder
from iot_common.telemetry import DeadLetter, deadletter_encoder
from iot_common.telemetry import DeadLetterReason as R
from iot_common.topics import Topics

log = logging.getLogger(__name__)


class DeviceEventsSource(AmqpBatchConsumer):
    def __init__(
        self,
        *,
        sink: KafkaSink,
        topics: Topics,
        devices: DeviceDirectory | None = None,
        **kw: Any,
    ) -> None:
        kw.setdefault("binding_key", "#")
        kw.setdefault("name", "device_events")
        super().__init__(handler=self._handle, **kw)
        self.sink = sink
        self.topics = topics
        self.devices = devices

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        records: list[Record] = []
        forwarded = 0
        now = time.time()
        for msg in batch:
            try:
                event = device_event_decoder.decode(msg.body)
            except msgspec.DecodeError as exc:
                log.warning("undecodable device event (message id %s): %s", msg.message_id, exc)
                dl = DeadLetter(
                    reason=R.UNDECODABLE,
                    source="amqp",
                    payload=msg.body,
                    ts=now,
                    detail=f"device event: {exc}"[:500],
                )
                records.append(
                    Record(self.topics.telemetry_deadletter, None, deadletter_encoder.encode(dl))
                )
                metrics.DEADLETTERED.labels("device_events", R.UNDECODABLE).inc()
                continue
            records.append(Record(self.topics.device_events, event.device_id.encode(), msg.body))
            forwarded += 1
            if self.devices is not None:
                self.devices.forget(event.device_id)
        await self.sink.produce(records)
        metrics.DEVICE_EVENTS_FORWARDED.inc(forwarded)
