"""The PostgreSQL store's tables and indexes."""

from __future__ import annotations

import logging

import asyncpg

from monitoring_store.postgres.rollups import rebuild_rollups

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS monitoring_windows (
    device_id text NOT NULL,
    metric text NOT NULL,
    window_seconds integer NOT NULL,
    window_start double precision NOT NULL,
    count bigint NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    mean double precision NOT NULL,
    stddev double precision NOT NULL,
    p50 double precision NOT NULL,
    p95 double precision NOT NULL,
    last double precision NOT NULL,
    last_ts double precision NOT NULL,
    final boolean NOT NULL DEFAULT true,
    updated_at double precision NOT NULL DEFAULT 0,
    CONSTRAINT monitoring_windows_pkey
        PRIMARY KEY (device_id, window_seconds, window_start, metric)
        INCLUDE (count, min, max, mean, stddev, p50, p95, last, last_ts, final, updated_at)
);
-- Index-only scans need all-visible pages: vacuum after 1 % new rows, not the default 20 %.
ALTER TABLE monitoring_windows SET (
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_scale_factor = 0.02
);
CREATE INDEX IF NOT EXISTS monitoring_windows_time
    ON monitoring_windows (window_seconds, window_start);

CREATE TABLE IF NOT EXISTS monitoring_samples (
    device_id text NOT NULL,
    ts double precision NOT NULL,
    seq bigint NOT NULL,
    metrics text[] NOT NULL,
    vals double precision[] NOT NULL,
    CONSTRAINT monitoring_samples_pkey PRIMARY KEY (device_id, ts, seq)
);
CREATE INDEX IF NOT EXISTS monitoring_samples_ts_brin
    ON monitoring_samples USING brin (ts) WITH (pages_per_range = 32);

CREATE TABLE IF NOT EXISTS monitoring_alerts (
    alert_id text PRIMARY KEY,
    device_id text NOT NULL,
    rule_id text NOT NULL,
    rule_type text NOT NULL,
    severity text NOT NULL,
    status text NOT NULL,
    message text NOT NULL,
    started_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    metric text,
    value double precision,
    threshold double precision,
    acknowledged_at double precision,
    acknowledged_by text,
    cleared_at double precision,
    owner_id text
);
CREATE INDEX IF NOT EXISTS monitoring_alerts_started ON monitoring_alerts (started_at DESC);
CREATE INDEX IF NOT EXISTS monitoring_alerts_device
    ON monitoring_alerts (device_id, started_at DESC);
CREATE INDEX IF NOT EXISTS monitoring_alerts_open
    ON monitoring_alerts (status, started_at DESC) WHERE status <> 'cleared';

CREATE TABLE IF NOT EXISTS monitoring_device_rules (
    device_id text PRIMARY KEY,
    owner_id text,
    device_type text,
    config jsonb NOT NULL,
    version bigint NOT NULL,
    active boolean NOT NULL DEFAULT true
);

CREATE TABLE IF NOT EXISTS monitoring_subscriptions (
    id text PRIMARY KEY,
    owner_id text NOT NULL,
    url text NOT NULL,
    secret text NOT NULL,
    device_ids text[],
    min_severity text NOT NULL,
    rule_types text[],
    created_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS monitoring_subscriptions_owner
    ON monitoring_subscriptions (owner_id, created_at);

CREATE TABLE IF NOT EXISTS monitoring_deliveries (
    id text PRIMARY KEY,
    subscription_id text NOT NULL
        REFERENCES monitoring_subscriptions (id) ON DELETE CASCADE,
    payload jsonb NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL,
    next_attempt_at double precision NOT NULL,
    last_error text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS monitoring_deliveries_due
    ON monitoring_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS monitoring_deliveries_sub
    ON monitoring_deliveries (subscription_id, created_at DESC);
-- Hourly rollups of the coarse windows (sizes of 60 s or more that divide an hour), for fleet
-- figures over long ranges: per device × metric, and per device the readings (per window the
-- largest count among the device's metrics, summed). Rebuilt from the windows of an hour
-- whenever one of them is upserted.
CREATE TABLE IF NOT EXISTS monitoring_hourly (
    window_seconds integer NOT NULL,
    hour_start double precision NOT NULL,
    device_id text NOT NULL,
    metric text NOT NULL,
    count bigint NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    sum double precision NOT NULL,
    PRIMARY KEY (window_seconds, hour_start, device_id, metric)
);
CREATE TABLE IF NOT EXISTS monitoring_hourly_devices (
    window_seconds integer NOT NULL,
    hour_start double precision NOT NULL,
    device_id text NOT NULL,
    readings bigint NOT NULL,
    PRIMARY KEY (window_seconds, hour_start, device_id)
);
CREATE TABLE IF NOT EXISTS monitoring_store_meta (key text PRIMARY KEY, value text NOT NULL);
"""


async def create_baseline(conn: asyncpg.Connection) -> None:
    """Create (or bring up to) the layout of migration 0001, in the caller's transaction."""
    long_samples = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'monitoring_samples' "
        "AND column_name = 'metric')"
    )
    if long_samples:  # the first layout (one row per metric value): convert
        await conn.execute(
            "DROP INDEX IF EXISTS monitoring_samples_ts_brin;"
            "ALTER TABLE monitoring_samples RENAME TO monitoring_samples_old;"
            "ALTER TABLE monitoring_samples_old "
            "RENAME CONSTRAINT monitoring_samples_pkey TO monitoring_samples_old_pkey;"
        )
    await conn.execute(_SCHEMA)
    if long_samples:
        await conn.execute(
            "INSERT INTO monitoring_samples (device_id, ts, seq, metrics, vals) "
            "SELECT device_id, ts, seq, array_agg(metric ORDER BY metric), "
            "array_agg(value ORDER BY metric) FROM monitoring_samples_old "
            "GROUP BY device_id, ts, seq ON CONFLICT DO NOTHING;"
            "DROP TABLE monitoring_samples_old;"
        )
        log.info("monitoring_samples converted to one row per reading")
    covering = await conn.fetchval(
        "SELECT indnatts > indnkeyatts FROM pg_index "
        "WHERE indexrelid = 'monitoring_windows_pkey'::regclass"
    )
    if not covering:  # created before the key carried the statistics
        await conn.execute(
            "ALTER TABLE monitoring_windows DROP CONSTRAINT monitoring_windows_pkey;"
            "ALTER TABLE monitoring_windows ADD CONSTRAINT monitoring_windows_pkey "
            "PRIMARY KEY (device_id, window_seconds, window_start, metric) INCLUDE "
            "(count, min, max, mean, stddev, p50, p95, last, last_ts, final, updated_at);"
        )
        log.info("monitoring_windows primary key rebuilt as a covering index")
    built = await conn.fetchval(
        "SELECT value FROM monitoring_store_meta WHERE key = 'hourly_rollup'"
    )
    if built is None:  # a new store, or one from before the rollups: build them
        await rebuild_rollups(conn)
