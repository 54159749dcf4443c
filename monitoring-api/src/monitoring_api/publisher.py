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
        try:
            await self._start()
        except Exception as exc:
            # Started again on the first publish; the API answers queries meanwhile.
            log.warning("alert publisher could not reach Kafka at %s: %s", self._bootstrap, exc)

    async def _start(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            linger_ms=0,
            enable_idempotence=False,
            request_timeout_ms=10_000,
        )
        try:
            await producer.start()
        except Exception:
            await producer.stop()
            raise
        self._producer = producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, alert: Alert) -> None:
        if self._producer is None:
            try:
                await self._start()
            except Exception as exc:
                log.error("alert %s stored but not produced: Kafka unreachable", alert.alert_id)
                raise ServiceUnavailable(
                    "the alert change is stored but not yet announced"
                ) from exc
        assert self._producer is not None
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
