"""Prometheus metrics of the bridge (served on ``/metrics`` of the HTTP port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter("ingest_messages_received_total", "Upstream messages received", ["source"])
READINGS_PRODUCED = Counter(
    "ingest_readings_produced_total", "Valid readings produced to telemetry.raw", ["source"]
)
ENVELOPES_PRODUCED = Counter(
    "ingest_envelopes_produced_total", "Envelopes produced to telemetry.raw", ["source"]
)
DEADLETTERED = Counter(
    "ingest_deadlettered_total", "Readings or messages dead-lettered", ["source", "reason"]
)
DEVICE_EVENTS_FORWARDED = Counter(
    "ingest_device_events_forwarded_total", "Device events forwarded to Kafka"
)
BATCH_SIZE = Histogram(
    "ingest_batch_messages",
    "Upstream messages per pipeline batch",
    ["source"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
PRODUCE_LATENCY = Histogram(
    "ingest_kafka_produce_seconds",
    "Time from handing a batch to Kafka to its acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IN_FLIGHT = Gauge(
    "ingest_in_flight_messages", "Upstream messages taken but not yet acknowledged", ["source"]
)
PRODUCE_FAILURES = Counter("ingest_kafka_produce_failures_total", "Failed produce attempts")
PRODUCE_REFUSED = Counter(
    "ingest_kafka_refused_total", "Records Kafka will never take (dead-lettered instead)"
)
READY = Gauge("ingest_ready", "1 when the bridge is taking traffic")
