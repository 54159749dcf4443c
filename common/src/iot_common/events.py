"""Device events (RabbitMQ ``device.events`` → Kafka ``device.events``), alerts and windows.

These are the records that cross process boundaries after the stream agents; each is JSON
encoded with msgspec. Times are epoch seconds (UTC).
"""

from __future__ import annotations

from typing import Any

import msgspec


class DeviceEvent(msgspec.Struct):
    """A device lifecycle or custom event.

    ``event_type`` is the RabbitMQ routing key: ``device.created``, ``device.updated``,
    ``device.deleted``, ``device.credentials_rotated`` or ``device.event.<type>``. For
    lifecycle events ``device`` holds the device as it is after the change (id, name, type,
    config, status, owner_id, config_version, active); custom events carry ``payload``.
    """

    event_id: str
    event_type: str
    device_id: str
    timestamp: float
    owner_id: str | None = None
    device: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None


class WindowStats(msgspec.Struct):
    """Statistics of one tumbling window of one device × metric (``stats.windows``).

    ``final`` is false for the periodic updates of a still-open window (live views) and true
    once the window has closed and is durably stored. A late reading inside the allowed
    lateness produces another final record with the corrected values.
    """

    device_id: str
    metric: str
    window_seconds: int
    window_start: float
    count: int
    min: float
    max: float
    mean: float
    stddev: float
    p50: float
    p95: float
    last: float
    last_ts: float
    final: bool = True
    updated_at: float = 0.0


#: Tumbling window sizes (seconds) the stream agents compute by default; the API builds its
#: buckets from the stored ones. Both read ``IOT_WINDOW_SIZES`` when it is set.
DEFAULT_WINDOW_SIZES: tuple[int, ...] = (10, 60)


class AlertStatus:
    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


#: Alert severities in increasing order; ``min_severity`` filters keep this rank and above.
#: The one definition: the store, the API, webhooks and rule validation all read it.
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
#: Alert statuses in lifecycle order; a status never moves backwards.
STATUS_RANK: dict[str, int] = {
    AlertStatus.ACTIVE: 0,
    AlertStatus.ACKNOWLEDGED: 1,
    AlertStatus.CLEARED: 2,
}


def severities_at_least(min_severity: str) -> list[str]:
    """The severities ranked at or above ``min_severity`` (ValueError for an unknown one)."""
    if min_severity not in SEVERITY_RANK:
        raise ValueError(f"unknown severity {min_severity!r}")
    rank = SEVERITY_RANK[min_severity]
    return [name for name, r in SEVERITY_RANK.items() if r >= rank]


class Alert(msgspec.Struct):
    """An alert's current state (``alerts`` topic and the store). One open per (device, rule)."""

    alert_id: str
    device_id: str
    rule_id: str
    rule_type: str
    severity: str
    status: str
    message: str
    started_at: float
    updated_at: float
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    cleared_at: float | None = None
    owner_id: str | None = None


json_encoder = msgspec.json.Encoder()
device_event_decoder = msgspec.json.Decoder(DeviceEvent)
window_decoder = msgspec.json.Decoder(WindowStats)
alert_decoder = msgspec.json.Decoder(Alert)
