"""The monitoring store: one interface, PostgreSQL and MongoDB backends, chosen by URL."""

from __future__ import annotations

import os
from typing import Any

from monitoring_store.base import (
    SEVERITY_RANK,
    STATUS_RANK,
    AlertTransitionError,
    Bucket,
    BucketSeries,
    Delivery,
    DeviceRules,
    FleetSummary,
    MetricSummary,
    MonitoringStore,
    Sample,
    SampleBatch,
    Subscription,
    severities_at_least,
)

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/iot"


def store_url_from_env() -> str:
    """``MONITORING_STORE_URL``, or the local PostgreSQL default."""
    return os.environ.get("MONITORING_STORE_URL") or DEFAULT_URL


def open_store(url: str | None = None, **options: Any) -> MonitoringStore:
    """Build the store for ``url`` (not yet connected: call ``await store.start()``).

    ``postgresql://`` / ``postgres://`` (also ``postgresql+asyncpg://``) → PostgreSQL via
    asyncpg; ``mongodb://`` / ``mongodb+srv://`` → MongoDB via PyMongo's async API (the database
    is the URL's path, default ``iot_monitoring``). ``options`` go to the backend's constructor
    (e.g. ``max_pool`` for PostgreSQL). ``None`` reads ``MONITORING_STORE_URL``.
    """
    url = url or store_url_from_env()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        from monitoring_store.postgres import PostgresStore

        return PostgresStore(url, **options)
    if scheme in ("mongodb", "mongodb+srv"):
        from monitoring_store.mongo import MongoStore

        return MongoStore(url, **options)
    raise ValueError(f"unsupported monitoring store URL scheme: {scheme or url!r}")


__all__ = [
    "DEFAULT_URL",
    "SEVERITY_RANK",
    "STATUS_RANK",
    "AlertTransitionError",
    "Bucket",
    "BucketSeries",
    "Delivery",
    "DeviceRules",
    "FleetSummary",
    "MetricSummary",
    "MonitoringStore",
    "Sample",
    "SampleBatch",
    "Subscription",
    "open_store",
    "severities_at_least",
    "store_url_from_env",
]
