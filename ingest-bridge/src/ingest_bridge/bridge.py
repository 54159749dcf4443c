"""Wires one bridge process together: Redis, device lookups, the Kafka sink and the sources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from ingest_bridge import metrics
from ingest_bridge.config import IngestBridgeSettings
from ingest_bridge.configs import ConfigClient
from ingest_bridge.devices import DeviceDirectory
from ingest_bridge.last_seen import LastSeenWriter
from ingest_bridge.pipeline import Pipeline
from ingest_bridge.sink import KafkaSink, refused_dead_letter
from ingest_bridge.sources.amqp import AmqpTelemetrySource
from ingest_bridge.sources.device_events import DeviceEventsSource
from ingest_bridge.sources.mqtt import MqttSource, session_client_id
from ingest_bridge.validate import Limits, Validator
from iot_common.device_config import ConfigReport

log = logging.getLogger(__name__)


class Bridge:
    """Owns every long-lived collaborator; started and stopped by the HTTP app's lifespan."""

    def __init__(
        self,
        settings: IngestBridgeSettings,
        *,
        redis: Redis | None = None,
        sink: KafkaSink | None = None,
        devices: DeviceDirectory | None = None,
        configs: ConfigClient | None = None,
    ) -> None:
        s = settings
        self.settings = s
        self.redis = redis or Redis.from_url(s.redis_url)
        self._own_redis = redis is None
        self.sink = sink or KafkaSink(
            bootstrap=s.kafka_bootstrap,
            linger_ms=s.kafka_linger_ms,
            max_batch_bytes=s.kafka_max_batch_bytes,
            max_request_bytes=s.kafka_max_request_bytes,
            compression=s.kafka_compression,
            request_timeout_ms=s.kafka_request_timeout_ms,
            retry_backoff_ms=s.kafka_retry_backoff_ms,
            stall_seconds=s.kafka_stall_seconds,
            dead_letter=partial(
                refused_dead_letter,
                topic=s.topics.telemetry_deadletter,
                # base64 in JSON: 4 bytes per 3, plus the dead letter's own fields
                max_payload=min(s.max_payload_bytes, (s.kafka_max_request_bytes - 2048) * 3 // 4),
            ),
        )
        self.devices = devices or DeviceDirectory(
            redis=self.redis,
            namespace=s.redis_namespace,
            device_management_url=s.device_management_url,
            internal_token=s.internal_token.get_secret_value(),
            ttl=s.device_cache_ttl,
            negative_ttl=s.device_negative_ttl,
            max_size=s.device_cache_size,
            timeout=s.device_lookup_timeout,
            concurrency=s.device_lookup_concurrency,
        )
        self.configs = configs or ConfigClient(
            device_management_url=s.device_management_url,
            internal_token=s.internal_token.get_secret_value(),
            timeout=s.device_lookup_timeout,
        )
        self.last_seen = LastSeenWriter(
            redis=self.redis, namespace=s.redis_namespace, interval=s.last_seen_interval
        )
        self.pipeline = Pipeline(
            validator=Validator(
                Limits(
                    max_payload_bytes=s.max_payload_bytes,
                    max_metrics=s.max_metrics,
                    max_metric_name_length=s.max_metric_name_length,
                    max_future_seconds=s.max_future_seconds,
                    max_age_seconds=s.max_age_seconds,
                )
            ),
            devices=self.devices,
            sink=self.sink,
            topics=s.topics,
            last_seen=self.last_seen,
        )
        self.mqtt: MqttSource | None = None
        self.amqp: AmqpTelemetrySource | None = None
        self.device_events: DeviceEventsSource | None = None
        rabbit = s.rabbitmq_url.get_secret_value()
        if s.mqtt_enabled:
            mqtt_password = s.mqtt_password.get_secret_value() if s.mqtt_password else None
            self.mqtt = MqttSource(
                pipeline=self.pipeline,
                host=s.mqtt_host,
                port=s.mqtt_port,
                client_id=session_client_id(
                    s.mqtt_client_id, password=mqtt_password, instance=s.mqtt_instance
                ),
                share_group=s.mqtt_share_group,
                topic_prefix=s.mqtt_topic_prefix,
                session_expiry=s.mqtt_session_expiry,
                receive_maximum=s.mqtt_receive_maximum,
                keepalive=s.mqtt_keepalive,
                username=s.mqtt_username,
                password=mqtt_password,
                ssl_context=s.mqtt_ssl_context(),
                max_in_flight=s.max_in_flight_messages,
                max_in_flight_bytes=s.max_in_flight_bytes,
                max_concurrent_batches=s.max_concurrent_batches,
                max_batch_messages=s.max_batch_messages,
                max_batch_bytes=s.max_batch_bytes,
                max_packet_size=s.mqtt_max_packet_size,
                on_config_report=self.config_reported,
            )
        if s.amqp_enabled:
            self.amqp = AmqpTelemetrySource(
                pipeline=self.pipeline,
                url=rabbit,
                exchange=s.telemetry_exchange,
                queue=s.amqp_queue,
                prefetch=s.amqp_prefetch,
                max_batch_messages=min(s.max_batch_messages, s.amqp_prefetch),
                max_concurrent_batches=s.max_concurrent_batches,
                max_in_flight_bytes=s.max_in_flight_bytes,
                max_batch_bytes=s.max_batch_bytes,
                max_message_size=s.amqp_max_message_size,
            )
        if s.device_events_enabled:
            self.device_events = DeviceEventsSource(
                sink=self.sink,
                topics=s.topics,
                devices=self.devices,
                url=rabbit,
                exchange=s.device_events_exchange,
                queue=s.device_events_queue,
                prefetch=s.device_events_prefetch,
                max_batch_messages=s.device_events_prefetch,
                # One batch at a time: a device's lifecycle events must reach Kafka in the
                # order device-management sent them (created before updated or deleted); two
                # batches in flight could be produced the other way round.
                max_concurrent_batches=1,
            )
        self.http_in_flight = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def config_reported(self, device_id: str, payload: bytes) -> None:
        """A device's ``devices/<id>/config/reported`` message: record the version it applied.

        Only the device itself can publish on its topic (the broker's account), so the id is
        the topic's. A report that is not a :class:`ConfigReport`, or names a version that does
        not exist, is logged and dropped (MQTT has no answer to give the device); an
        unreachable device-management raises, so the message is not acknowledged and comes
        again.
        """
        try:
            report = ConfigReport.model_validate_json(payload)
        except ValidationError as exc:
            log.warning(
                "device %s reported a malformed config version (%d bytes): %s",
                device_id,
                len(payload),
                exc.errors(include_url=False, include_input=False)[:3],
            )
            return
        answer = await self.configs.report(device_id, report.version)
        if answer.status != 200:
            log.warning(
                "device %s reported config version %d: device-management answered %d",
                device_id,
                report.version,
                answer.status,
            )

    @property
    def sources(self) -> list[Any]:
        return [x for x in (self.mqtt, self.amqp, self.device_events) if x is not None]

    def _named_sources(self) -> list[tuple[str, Any]]:
        return [
            ("mqtt", self.mqtt),
            ("amqp", self.amqp),
            ("device_events", self.device_events),
        ]

    async def start(self) -> None:
        """Start everything in the background; sources begin once Kafka is connected."""
        await self.last_seen.start()
        self._tasks.append(asyncio.create_task(self._run(), name="bridge"))

    async def _run(self) -> None:
        await self.sink.start()
        runners = [asyncio.create_task(src.run(), name=f"source-{src}") for src in self.sources]
        self._tasks.extend(runners)

    async def close(self) -> None:
        for src in self.sources:
            with contextlib.suppress(Exception):
                await src.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.sink.close()
        await self.last_seen.close()
        await self.devices.close()
        await self.configs.close()
        if self._own_redis:
            await self.redis.aclose()

    async def redis_ok(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), timeout=1.0))
        except Exception:
            return False

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Dependencies reachable: Kafka connected, Redis answering, sources connected."""
        detail: dict[str, Any] = {
            "kafka": {"connected": self.sink.connected, "last_error": self.sink.last_error},
            "redis": {"connected": await self.redis_ok()},
        }
        for name, src in (
            ("mqtt", self.mqtt),
            ("amqp", self.amqp),
            ("device_events", self.device_events),
        ):
            if src is not None:
                detail[name] = src.status()
        ok = (
            self.sink.connected
            and detail["redis"]["connected"]
            and all(src.connected for src in self.sources)
        )
        return ok, detail

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Taking traffic: healthy enough, Kafka keeping up, in-flight below the bounds."""
        reasons = []
        if not self.sink.ready:
            reasons.append("kafka not acknowledging" if self.sink.connected else "kafka down")
        if self.pipeline.lookups_failing:
            reasons.append("device lookups failing")
        for name, src in (
            ("mqtt", self.mqtt),
            ("amqp", self.amqp),
            ("device_events", self.device_events),
        ):
            if src is None:
                continue
            if not src.connected:
                reasons.append(f"{name} disconnected")
            elif src.saturated:
                reasons.append(f"{name} in-flight limit reached")
        if self.http_in_flight >= self.settings.http_max_in_flight_requests:
            reasons.append("http in-flight limit reached")
        ok = not reasons
        metrics.READY.set(1 if ok else 0)
        return ok, {"reasons": reasons}
