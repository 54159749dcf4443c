"""The monitoring store: one interface, PostgreSQL and MongoDB backends, chosen by URL."""

from __future__ import annotations

import os
from typing import Any

from iot_common.events import SEVERITY_RANK, STATUS_RANK, severities_at_least
from iot_common.settings import DEFAULT_DATABASE_URL
from monitoring_store.base import (
    DEADLETTER_PAYLOAD_BYTES,
    AlertTransitionError,
    Bucket,
    BucketSeries,
    DeadLetterRecord,
    Delivery,
    DeviceRules,
    FleetSummary,
    MetricSummary,
    MonitoringStore,
    Sample,
    SampleBatch,
    Subscription,
)

DEFAULT_URL = DEFAULT_DATABASE_URL  # the platform's one default (iot_common.settings)


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


async def migrate(url: str | None = None) -> str:
    """Bring the store at ``url`` to the newest schema version; returns that version.

    PostgreSQL: the Alembic revisions in ``postgres/alembic``; MongoDB: the numbered
    migrations in ``mongo/migrations.py``, recorded in the store's ``schema_migrations``.
    """
    store = open_store(url, migrate=True)
    await store.start()  # start() upgrades a store that is behind, under the migration lock
    try:
        return await store.schema_version()
    finally:
        await store.close()


__all__ = [
    "DEADLETTER_PAYLOAD_BYTES",
    "DEFAULT_URL",
    "SEVERITY_RANK",
    "STATUS_RANK",
    "AlertTransitionError",
    "Bucket",
    "BucketSeries",
    "DeadLetterRecord",
    "Delivery",
    "DeviceRules",
    "FleetSummary",
    "MetricSummary",
    "MonitoringStore",
    "Sample",
    "SampleBatch",
    "Subscription",
    "migrate",
    "open_store",
    "severities_at_least",
    "store_url_from_env",
]
