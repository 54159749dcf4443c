"""The telemetry message contract: what devices send and what the bridge puts on the bus.

A device sends one reading or a JSON array of readings::

    {"ts": 1732700000.5 | "2026-11-27T10:00:00Z", "metrics": {"temp": 21.5}, "seq": 17}

The ingest bridge validates them and produces one :class:`TelemetryEnvelope` per upstream
message to ``telemetry.raw`` (key = device id). An envelope carries every valid reading of that
message, so a gateway's batch of 50 readings is one Kafka record, not fifty.
"""

from __future__ import annotations

import msgspec


class DeviceReading(msgspec.Struct, forbid_unknown_fields=False):
    """One reading as a device sends it (before validation)."""

    ts: float | str
    metrics: dict[str, float]
    seq: int | None = None
    #: Optional; when present it must match the device id of the topic / URL.
    device_id: str | None = None


class Reading(msgspec.Struct, array_like=True):
    """A validated reading: event time as epoch seconds (UTC), finite metric values."""

    ts: float
    metrics: dict[str, float]
    seq: int | None = None


class TelemetryEnvelope(msgspec.Struct):
    """Canonical record on ``telemetry.raw``."""

    device_id: str
    source: str  # "mqtt" | "amqp" | "http"
    ingest_ts: float
    readings: list[Reading]


class DeadLetter(msgspec.Struct):
    """Record on ``telemetry.deadletter``: the original bytes plus why they were refused.

    ``payload`` is the original message body, base64-encoded by msgspec's JSON encoder.
    """

    reason: str
    source: str
    payload: bytes
    ts: float
    device_id: str | None = None
    detail: str | None = None


#: Dead-letter reasons, counted per reason by every stage that dead-letters.
class DeadLetterReason:
    NOT_JSON = "not_json"
    TOO_LARGE = "too_large"
    INVALID_SCHEMA = "invalid_schema"
    MISSING_METRICS = "missing_metrics"
    NON_NUMERIC_METRIC = "non_numeric_metric"
    NON_FINITE = "non_finite"
    TOO_MANY_METRICS = "too_many_metrics"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOO_OLD = "too_old"
    UNKNOWN_DEVICE = "unknown_device"
    INACTIVE_DEVICE = "inactive_device"
    DEVICE_MISMATCH = "device_mismatch"
    #: The broker-proven sender (AMQP ``user_id``) may not write the device it names.
    UNAUTHORIZED = "unauthorized"
    LATE = "late"
    UNDECODABLE = "undecodable"
    #: Decoding or processing the record raised (an error callback chose to dead-letter it).
    PROCESSING_ERROR = "processing_error"
    #: A sink refused the record for good (an error callback chose to dead-letter it).
    SINK_REFUSED = "sink_refused"


envelope_encoder = msgspec.json.Encoder()
envelope_decoder = msgspec.json.Decoder(TelemetryEnvelope)
deadletter_encoder = msgspec.json.Encoder()
deadletter_decoder = msgspec.json.Decoder(DeadLetter)
