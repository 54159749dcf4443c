"""The monitoring store: one interface, PostgreSQL and MongoDB backends, chosen by URL."""

from monitoring_store.base import (
    Bucket,
    Delivery,
    DeviceRules,
    FleetSummary,
    MetricSummary,
    MonitoringStore,
    Sample,
    SampleBatch,
    Subscription,
)

__all__ = [
    "Bucket",
    "Delivery",
    "DeviceRules",
    "FleetSummary",
    "MetricSummary",
    "MonitoringStore",
    "Sample",
    "SampleBatch",
    "Subscription",
]
