"""Settings of the ingest bridge (env prefix ``INGEST_BRIDGE_``, shared fields also ``IOT_``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from iot_common import dynsec
from iot_common.device_config import MAX_METRICS
from iot_common.settings import ServiceSettings


class IngestBridgeSettings(ServiceSettings):
    """Limits, Kafka tuning, in-flight bounds and the per-source options of the bridge."""

    model_config = SettingsConfigDict(env_prefix="INGEST_BRIDGE_", extra="ignore", env_file=None)

    # --- HTTP (ingest endpoint, /health, /ready, /metrics) ---
    http_enabled: bool = True
    http_host: str = "0.0.0.0"
    http_port: int = 8004
    #: Hard cap on an HTTP body; bodies above ``max_payload_bytes`` but below this are
    #: dead-lettered (``too_large``), bodies above it are refused by the server outright.
    http_max_body_bytes: int = 1024 * 1024
    #: How long an HTTP ingest request may wait for Kafka before answering 503.
    http_ack_timeout: float = 15.0

    # --- validation limits ---
    max_payload_bytes: int = 64 * 1024
    max_metrics: int = MAX_METRICS
    max_metric_name_length: int = 64
    #: Readings stamped further than this into the future are refused (clock skew allowance).
    max_future_seconds: float = 300.0
    #: Readings older than this (the accepted lateness) are refused.
    max_age_seconds: float = 24 * 3600.0

    # --- Kafka producer ---
    kafka_linger_ms: int = 5
    kafka_max_batch_bytes: int = 512 * 1024
    kafka_max_request_bytes: int = 4 * 1024 * 1024
    kafka_compression: Literal["lz4", "gzip", "snappy", "zstd", "none"] = "lz4"
    kafka_request_timeout_ms: int = 30_000
    kafka_retry_backoff_ms: int = 200
    #: A produce call not acknowledged within this many seconds makes the bridge not ready.
    kafka_stall_seconds: float = 5.0

    # --- in-flight bounds (backpressure) ---
    #: Upstream messages taken but not yet acknowledged by Kafka, per source.
    max_in_flight_messages: int = 10_000
    #: Their payload bytes (bounds memory when devices send large batches).
    max_in_flight_bytes: int = 16 * 1024 * 1024
    #: Batches a source hands to the pipeline concurrently.
    max_concurrent_batches: int = 8
    #: Largest number of upstream messages in one pipeline batch.
    max_batch_messages: int = 5_000
    #: A batch is cut once its payloads add up to this many bytes.
    max_batch_bytes: int = 1024 * 1024
    #: HTTP requests being processed at once; more are answered 503 + Retry-After.
    http_max_in_flight_requests: int = 256

    # --- MQTT ---
    mqtt_enabled: bool = True
    #: First part of the client id. The whole id is ``<this>-<suffix>``, the suffix derived
    #: from the bridge's MQTT password and ``mqtt_instance`` (see
    #: :func:`ingest_bridge.sources.mqtt.session_client_id`): nobody without the password can
    #: name it, each replica has its own, and a restarted bridge resumes its broker session.
    mqtt_client_id: str = "ingest-bridge"
    #: This replica's name (default: the host name, i.e. the pod or container name).
    mqtt_instance: str | None = None
    #: Shared-subscription group: bridges in one group split the load.
    mqtt_share_group: str = "ingest-bridge"
    #: Seconds the broker keeps the session (and queues QoS 1 readings) while we are away.
    mqtt_session_expiry: int = 7 * 24 * 3600
    #: MQTT v5 Receive Maximum: unacknowledged QoS 1 messages the broker may send us.
    mqtt_receive_maximum: int = Field(default=10_000, ge=1, le=65_535)
    mqtt_keepalive: int = 30
    #: MQTT v5 Maximum Packet Size announced in CONNECT: the broker drops larger messages
    #: instead of sending them (readings are capped at ``max_payload_bytes``; the rest leaves
    #: room for topic and properties). Same figure as the brokers' ``max_packet_size``.
    mqtt_max_packet_size: int = Field(default=256 * 1024, ge=1024, le=268_435_455)
    #: The bridge's own MQTT account (allowed only its shared subscription; iot_common.dynsec).
    mqtt_username: str | None = dynsec.BRIDGE_USERNAME
    mqtt_password: SecretStr | None = SecretStr(dynsec.DEV_BRIDGE_PASSWORD)

    # --- AMQP telemetry and device events ---
    amqp_enabled: bool = True
    amqp_queue: str = "ingest-bridge.telemetry"
    #: Messages in flight at most (the prefetch is lowered further to bound their bytes).
    amqp_prefetch: int = 2_000
    #: The broker's ``max_message_size`` (the compose/Kubernetes RabbitMQ config sets this):
    #: the largest message the bridge must expect before it has seen any.
    amqp_max_message_size: int = 1024 * 1024
    device_events_enabled: bool = True
    device_events_queue: str = "ingest-bridge.device-events"
    device_events_prefetch: int = 500

    # --- device lookups ---
    #: Seconds a device looked up is trusted locally before asking Redis again.
    device_cache_ttl: float = 5.0
    #: Same for ids found unknown (short: a device just created should work quickly).
    device_negative_ttl: float = 2.0
    device_cache_size: int = 100_000
    device_lookup_timeout: float = 5.0
    device_lookup_concurrency: int = 16

    # --- last seen ---
    last_seen_interval: float = 1.0


@lru_cache
def get_settings() -> IngestBridgeSettings:
    return IngestBridgeSettings()
