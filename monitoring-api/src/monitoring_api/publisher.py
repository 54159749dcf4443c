"""Produces alert state changes made through the API (ack/clear) to the ``alerts`` topic."""

from __future__ import annotations

import logging
from typing import Protocol

from aiokafka import AIOKafkaProducer

from iot_common.errors import ServiceUnavailable
from iot_common.events import Alert, json_encoder

log = logging.getLogger(__name__)


class AlertPublisher(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, alert: Alert) -> None: ...


class KafkaAlertPublisher:
    """Keyed by device id, so an alert's changes stay in order on one partition."""

    def __init__(self, *, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, acks="all", linger_ms=0, enable_idempotence=False
        )
        await self._producer.start()

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, alert: Alert) -> None:
        if self._producer is None:
            raise ServiceUnavailable("alert publisher is not running")
        try:
            await self._producer.send_and_wait(
                self.topic, json_encoder.encode(alert), key=alert.device_id.encode()
            )
        except Exception as exc:
            log.error("could not produce alert %s to %s: %s", alert.alert_id, self.topic, exc)
            raise ServiceUnavailable("the alert change is stored but not yet announced") from exc


class NullAlertPublisher:
    """Used when Kafka is disabled: changes are stored, nothing is announced."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, alert: Alert) -> None:
        return None
