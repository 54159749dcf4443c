"""Kafka topic names (the bus contract) and RabbitMQ exchange names."""

from __future__ import annotations

from dataclasses import dataclass

TELEMETRY_RAW = "telemetry.raw"
TELEMETRY_DEADLETTER = "telemetry.deadletter"
DEVICE_EVENTS = "device.events"
STATS_WINDOWS = "stats.windows"
ALERTS = "alerts"

#: RabbitMQ topic exchange device-management publishes lifecycle and custom events to.
DEVICE_EVENTS_EXCHANGE = "device.events"
#: RabbitMQ topic exchange devices publish telemetry to (routing key ``device.{device_id}``).
TELEMETRY_EXCHANGE = "telemetry"


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names with an optional prefix, so test runs and tenants can share a broker."""

    prefix: str = ""

    @property
    def telemetry_raw(self) -> str:
        return self.prefix + TELEMETRY_RAW

    @property
    def telemetry_deadletter(self) -> str:
        return self.prefix + TELEMETRY_DEADLETTER

    @property
    def device_events(self) -> str:
        return self.prefix + DEVICE_EVENTS

    @property
    def stats_windows(self) -> str:
        return self.prefix + STATS_WINDOWS

    @property
    def alerts(self) -> str:
        return self.prefix + ALERTS

    def all(self) -> list[str]:
        return [
            self.telemetry_raw,
            self.telemetry_deadletter,
            self.device_events,
            self.stats_windows,
            self.alerts,
        ]
