r"""PostgreSQL backend of the monitoring store (asyncpg).

Layout and why:

* ``monitoring_windows`` — primary key ``(device_id, window_seconds, window_start, metric)``.
  The API's common question is "this device, this resolution, this time range, all (or a few)
  metrics"; with the metric last in the key that is one contiguous index range, and a filter on
  a few metrics costs at most the device's metric count in extra index tuples. The key
  ``INCLUDE``\ s every statistic, so a range read is an index-only scan of a few contiguous index
  pages instead of one heap page per minute of data (windows arrive in time order, so one
  device's rows are spread over the heap): measured on 10M windows, 24 h × 5 metrics at 1-minute
  resolution went from 1,524 buffer reads / 10–17 ms to 172 / 1.4 ms server-side. The price is
  an index about as large as the table. A second index
  ``(window_seconds, window_start)`` serves fleet-wide time ranges (fleet summary, retention).
* ``monitoring_samples`` — wide form, one row per reading: ``metrics text[]`` and ``vals
  float8[]`` side by side (sorted by metric name), primary key ``(device_id, ts, seq)`` (``seq``
  is -1 where the device sent none), so a replayed reading is stored once. Chosen over the long
  form (one row per metric value) by measurement on this machine (200,000 readings × 5 metrics,
  batches of 10,000, unnest upserts): long 17,600 readings/s and 1,330 bytes per reading
  (table + indexes); wide 26,000–63,000 readings/s and 350 bytes per reading — one tuple
  header and one index entry per reading instead of five. The writes still arrive long
  (:class:`~monitoring_store.base.SampleBatch`); PostgreSQL groups them into readings inside the
  insert statement, so the writer spends no Python time regrouping. A BRIN index on ``ts``
  serves retention deletes and "since" scans cheaply (readings arrive roughly in time order).
* Bulk writes are single ``INSERT … SELECT FROM unnest($1::text[], …) ON CONFLICT`` statements:
  one round trip per chunk, arrays encoded in binary by asyncpg, no temporary tables.

Timestamps are stored as ``double precision`` epoch seconds, exactly as the interface carries
them, so nothing is lost or shifted in conversions.
"""

# SQL text here is assembled only from module constants; every value goes as a $n parameter.
# ruff: noqa: S608

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import struct
import time
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import asyncpg
import msgspec
import numpy as np
import numpy.typing as npt

from iot_common.events import Alert, WindowStats
from monitoring_store.base import (
    BUCKET_COLUMNS,
    STATUS_RANK,
    AlertTransitionError,
    Bucket,
    BucketSeries,
    Delivery,
    DeviceRules,
    FleetSummary,
    MetricSummary,
    Sample,
    SampleBatch,
    Subscription,
    buckets_from_series,
    check_bucket_sizes,
    dedupe_windows,
    series_from_buckets,
    severities_at_least,
)

log = logging.getLogger(__name__)

#: Rows per write statement; bounds the size of one statement's arrays.
WRITE_CHUNK = 50_000
#: Look-back spans (seconds) tried in turn for fleet-wide "recent samples".
RECENT_SPANS = (60.0, 600.0, 3600.0, 86400.0)

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

_WINDOW_COLS = (
    "device_id, metric, window_seconds, window_start, count, min, max, mean, stddev, "
    "p50, p95, last, last_ts, final, updated_at"
)
_WINDOW_UPSERT = f"""
INSERT INTO monitoring_windows ({_WINDOW_COLS})
SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::float8[], $5::bigint[],
                     $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[],
                     $11::float8[], $12::float8[], $13::float8[], $14::boolean[], $15::float8[])
ON CONFLICT (device_id, window_seconds, window_start, metric) DO UPDATE SET
    count = EXCLUDED.count, min = EXCLUDED.min, max = EXCLUDED.max, mean = EXCLUDED.mean,
    stddev = EXCLUDED.stddev, p50 = EXCLUDED.p50, p95 = EXCLUDED.p95, last = EXCLUDED.last,
    last_ts = EXCLUDED.last_ts, final = EXCLUDED.final, updated_at = EXCLUDED.updated_at
WHERE monitoring_windows.updated_at <= EXCLUDED.updated_at
"""

# Long rows in, one wide row per reading out; DISTINCT ON drops a metric repeated within the
# batch so a reading never lists a metric twice. A reading already stored is left as it is.
_SAMPLE_INSERT = """
INSERT INTO monitoring_samples (device_id, ts, seq, metrics, vals)
SELECT d, t, s, array_agg(m ORDER BY m), array_agg(v ORDER BY m)
FROM (
    SELECT DISTINCT ON (d, t, s, m) d, m, t, v, s
    FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::bigint[])
        AS u(d, m, t, v, s)
    ORDER BY d, t, s, m
) AS r
GROUP BY d, t, s
ON CONFLICT DO NOTHING
"""
_SAMPLE_ROWS = """
SELECT s.device_id, u.metric, s.ts, u.value, s.seq
FROM monitoring_samples AS s CROSS JOIN LATERAL unnest(s.metrics, s.vals) AS u(metric, value)
"""

_ALERT_COLS = (
    "alert_id",
    "device_id",
    "rule_id",
    "rule_type",
    "severity",
    "status",
    "message",
    "started_at",
    "updated_at",
    "metric",
    "value",
    "threshold",
    "acknowledged_at",
    "acknowledged_by",
    "cleared_at",
    "owner_id",
)
_STATUS_RANK_SQL = "CASE {s} WHEN 'active' THEN 0 WHEN 'acknowledged' THEN 1 ELSE 2 END"
# A status never moves backwards (an agent's late "active" update must not undo a user's
# acknowledgement); descriptive fields follow the newer update; who/when of ack and clear are
# kept once set.
_ALERT_UPSERT = f"""
INSERT INTO monitoring_alerts ({", ".join(_ALERT_COLS)})
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::float8[], $9::float8[], $10::text[], $11::float8[],
                     $12::float8[], $13::float8[], $14::text[], $15::float8[], $16::text[])
ON CONFLICT (alert_id) DO UPDATE SET
    status = CASE WHEN {_STATUS_RANK_SQL.format(s="EXCLUDED.status")}
                       >= {_STATUS_RANK_SQL.format(s="monitoring_alerts.status")}
                  THEN EXCLUDED.status ELSE monitoring_alerts.status END,
    severity = CASE WHEN EXCLUDED.updated_at >= monitoring_alerts.updated_at
                    THEN EXCLUDED.severity ELSE monitoring_alerts.severity END,
    message = CASE WHEN EXCLUDED.updated_at >= monitoring_alerts.updated_at
                   THEN EXCLUDED.message ELSE monitoring_alerts.message END,
    metric = COALESCE(EXCLUDED.metric, monitoring_alerts.metric),
    value = CASE WHEN EXCLUDED.updated_at >= monitoring_alerts.updated_at
                 THEN COALESCE(EXCLUDED.value, monitoring_alerts.value)
                 ELSE monitoring_alerts.value END,
    threshold = COALESCE(EXCLUDED.threshold, monitoring_alerts.threshold),
    acknowledged_at = COALESCE(monitoring_alerts.acknowledged_at, EXCLUDED.acknowledged_at),
    acknowledged_by = COALESCE(monitoring_alerts.acknowledged_by, EXCLUDED.acknowledged_by),
    cleared_at = COALESCE(monitoring_alerts.cleared_at, EXCLUDED.cleared_at),
    owner_id = COALESCE(EXCLUDED.owner_id, monitoring_alerts.owner_id),
    updated_at = GREATEST(EXCLUDED.updated_at, monitoring_alerts.updated_at)
"""

_RULES_UPSERT = """
INSERT INTO monitoring_device_rules (device_id, owner_id, device_type, config, version, active)
SELECT d, o, t, c::jsonb, v, a
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::boolean[])
    AS u(d, o, t, c, v, a)
ON CONFLICT (device_id) DO UPDATE SET
    owner_id = EXCLUDED.owner_id, device_type = EXCLUDED.device_type, config = EXCLUDED.config,
    version = EXCLUDED.version, active = EXCLUDED.active
WHERE monitoring_device_rules.version <= EXCLUDED.version
"""

# One sort by (metric, bucket, last_ts) feeds both the window functions (bucket mean M and the
# latest ``last``) and the grouping. Pooled population variance around M:
#   N·Var = Σ nᵢ·(sᵢ² + (mᵢ − M)²)
# (taken around M rather than as Σ nᵢ(sᵢ² + mᵢ²) − N·M², which cancels catastrophically when
# the mean is large against the spread).
_AGGREGATE = """
SELECT metric, bucket, $7::integer, sum(count)::bigint, min(min), max(max), min(bm),
       sqrt(greatest(sum(count * (stddev * stddev + (mean - bm) * (mean - bm)))
                     / sum(count), 0)),
       CASE WHEN count(*) = 1 THEN min(p50) ELSE sum(count * p50) / sum(count) END,
       CASE WHEN count(*) = 1 THEN min(p95) ELSE sum(count * p95) / sum(count) END,
       min(latest), count(*) = 1
FROM (
    SELECT metric, bucket, count, min, max, mean, stddev, p50, p95,
           sum(count * mean) OVER b / sum(count) OVER b AS bm,
           last_value(last) OVER b AS latest
    FROM (
        SELECT metric, floor(window_start / $5) * $5 AS bucket, count, min, max, mean,
               stddev, p50, p95, last, last_ts
        FROM monitoring_windows
        WHERE device_id = $1 AND window_seconds = $2
          AND window_start >= $3 AND window_start < $4
          AND ($6::text[] IS NULL OR metric = ANY($6::text[]))
          AND count > 0
    ) AS w
    WINDOW b AS (PARTITION BY metric, bucket ORDER BY last_ts
                 ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
) AS x
GROUP BY metric, bucket
ORDER BY metric, bucket
"""

# Windows in index order (window_start, metric): no sort. Each numeric column comes back as
# one bytea in PostgreSQL's binary array format (array_send), which numpy reads in one call;
# decoding 7,200 windows × 9 columns as Python floats costs more than the query itself.
_WINDOWS_AS_COLUMNS = """
SELECT array_agg(metric), array_send(array_agg(window_start)), array_send(array_agg(count)),
       array_send(array_agg(min)), array_send(array_agg(max)), array_send(array_agg(mean)),
       array_send(array_agg(stddev)), array_send(array_agg(p50)), array_send(array_agg(p95)),
       array_send(array_agg(last))
FROM (
    SELECT metric, window_start, count, min, max, mean, stddev, p50, p95, last
    FROM monitoring_windows
    WHERE device_id = $1 AND window_seconds = $2 AND window_start >= $3 AND window_start < $4
      AND count > 0 AND ($5::text[] IS NULL OR metric = ANY($5::text[]))
    ORDER BY window_start, metric
) AS w
"""

_F8_ELEMENTS = np.dtype([("len", ">i4"), ("v", ">f8")])
_I8_ELEMENTS = np.dtype([("len", ">i4"), ("v", ">i8")])


def _binary_array(raw: bytes | None, elements: np.dtype[Any], dtype: type) -> npt.NDArray[Any]:
    """A one-dimensional array without NULLs from PostgreSQL's binary array format
    (ndim, has-null flag, element type, then per dimension size and lower bound; then each
    element as a 4-byte length and its value)."""
    if raw is None:
        return np.empty(0, dtype)
    ndim, has_null = struct.unpack_from(">ii", raw)
    if ndim == 0:
        return np.empty(0, dtype)
    if ndim != 1 or has_null:
        raise ValueError("expected a one-dimensional array without NULLs")
    return np.frombuffer(raw, elements, offset=20)["v"].astype(dtype)


#: Window sizes rolled up hourly: at least a minute (finer ones serve short ranges, which
#: read few windows anyway) and dividing an hour.
ROLLUP_MIN_WINDOW = 60


def _rolled_up(window_seconds: int) -> bool:
    return window_seconds >= ROLLUP_MIN_WINDOW and 3600 % window_seconds == 0


# The rollups aggregate a source of windows with their hour: (window_seconds, h, device_id,
# metric, window_start, count, min, max, mean). Refreshing takes the windows of the given
# (device, size, hour) keys; rebuilding takes every window of a rolled-up size.
_ROLLUP_INSERTS = (
    """
INSERT INTO monitoring_hourly (window_seconds, hour_start, device_id, metric, count, min, max,
                               sum)
SELECT window_seconds, h, device_id, metric, sum(count), min(min), max(max), sum(count * mean)
FROM ({source}) AS w GROUP BY window_seconds, h, device_id, metric
""",
    """
INSERT INTO monitoring_hourly_devices (window_seconds, hour_start, device_id, readings)
SELECT window_seconds, h, device_id, sum(n)
FROM (SELECT window_seconds, h, device_id, window_start, max(count) AS n
      FROM ({source}) AS w GROUP BY window_seconds, h, device_id, window_start) AS x
GROUP BY window_seconds, h, device_id
""",
)
_KEYS = "unnest($1::text[], $2::integer[], $3::float8[]) AS k(d, ws, h)"
# Recompute the given (device, size, hour) rollups from all their windows: delete, then insert
# (a metric whose windows all vanished leaves no row behind).
_ROLLUP_DELETE = f"""
DELETE FROM {{table}} AS r USING {_KEYS}
WHERE r.window_seconds = k.ws AND r.hour_start = k.h AND r.device_id = k.d
"""
_ROLLUP_REFRESH_SOURCE = f"""
SELECT w.window_seconds, k.h, w.device_id, w.metric, w.window_start, w.count, w.min, w.max,
       w.mean
FROM {_KEYS}
JOIN monitoring_windows AS w
  ON w.device_id = k.d AND w.window_seconds = k.ws
 AND w.window_start >= k.h AND w.window_start < k.h + 3600 AND w.count > 0
"""
_ROLLUP_REBUILD_SOURCE = f"""
SELECT window_seconds, floor(window_start / 3600) * 3600 AS h, device_id, metric,
       window_start, count, min, max, mean
FROM monitoring_windows
WHERE window_seconds >= {ROLLUP_MIN_WINDOW} AND 3600 % window_seconds = 0 AND count > 0
"""
_ROLLUP_REBUILD = ";".join(
    [
        "TRUNCATE monitoring_hourly, monitoring_hourly_devices",
        *(q.format(source=_ROLLUP_REBUILD_SOURCE) for q in _ROLLUP_INSERTS),
        "INSERT INTO monitoring_store_meta (key, value) VALUES ('hourly_rollup', '1') "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    ]
)
_ROLLUP_REFRESH = (
    *(_ROLLUP_DELETE.format(table=t) for t in ("monitoring_hourly", "monitoring_hourly_devices")),
    *(q.format(source=_ROLLUP_REFRESH_SOURCE) for q in _ROLLUP_INSERTS),
)

_DELIVERY_COLS = (
    "id, subscription_id, payload, status, attempts, next_attempt_at, last_error, "
    "created_at, updated_at"
)


_second = itemgetter(1)
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _dsn(url: str) -> str:
    """asyncpg wants ``postgresql://``; accept SQLAlchemy-style ``postgresql+asyncpg://`` too."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


async def rebuild_rollups(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
    """Rebuild the hourly rollups from all windows, in one transaction."""
    async with conn.transaction():
        await conn.execute("SET LOCAL work_mem = '256MB'")
        await conn.execute(_ROLLUP_REBUILD)


def _device_lock(device_id: str) -> int:
    """A 63-bit advisory-lock key for a device (stable across processes)."""
    digest = hashlib.blake2b(device_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


async def _refresh_rollups(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    hours: Sequence[tuple[str, int, float]],
) -> None:
    """Recompute the hourly rollups of (device, window size, hour start) from their windows."""
    args = ([d for d, _, _ in hours], [ws for _, ws, _ in hours], [h for _, _, h in hours])
    for query in _ROLLUP_REFRESH:
        await conn.execute(query, *args)


def _chunks(n: int, size: int | None = None) -> list[slice]:
    size = size or WRITE_CHUNK
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _reading_chunks(batch: SampleBatch, size: int | None = None) -> list[slice]:
    """Slices of about ``size`` rows that never cut through one reading's rows.

    A reading cut in two would be stored with only the metrics of the first part (the second
    write finds the key present and does nothing). Rows of one reading are contiguous in the
    batches the agents build; where they are not, the whole batch goes in one statement.
    """
    size = size or WRITE_CHUNK
    n = len(batch)
    if n <= size:
        return [slice(0, n)]
    out: list[slice] = []
    begin = 0
    while n - begin > size:
        cut = begin + size
        # move the cut forward to the first row of the next reading
        while cut < n and (
            batch.device_id[cut] == batch.device_id[cut - 1]
            and batch.ts[cut] == batch.ts[cut - 1]
            and batch.seq[cut] == batch.seq[cut - 1]
        ):
            cut += 1
        out.append(slice(begin, cut))
        begin = cut
    if begin < n:
        out.append(slice(begin, n))
    return out


def _alert_from(row: asyncpg.Record) -> Alert:
    return Alert(**{c: row[c] for c in _ALERT_COLS})


def _delivery_from(row: asyncpg.Record) -> Delivery:
    return Delivery(
        id=row["id"],
        subscription_id=row["subscription_id"],
        payload=row["payload"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _subscription_from(row: asyncpg.Record) -> Subscription:
    return Subscription(
        id=row["id"],
        owner_id=row["owner_id"],
        url=row["url"],
        secret=row["secret"],
        device_ids=list(row["device_ids"]) if row["device_ids"] is not None else None,
        min_severity=row["min_severity"],
        rule_types=list(row["rule_types"]) if row["rule_types"] is not None else None,
        created_at=row["created_at"],
    )


def _sample_from(row: asyncpg.Record) -> Sample:
    seq = row["seq"]
    return Sample(
        device_id=row["device_id"],
        metric=row["metric"],
        ts=row["ts"],
        value=row["value"],
        seq=None if seq < 0 else seq,
    )


class PostgresStore:
    """The monitoring store on PostgreSQL (see the module docstring for the layout)."""

    def __init__(
        self, url: str, *, min_pool: int = 1, max_pool: int = 10, schema: str | None = None
    ) -> None:
        """``schema`` keeps the store's tables in their own PostgreSQL schema (created at
        start), e.g. to share a database with other services or to isolate test runs."""
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        self._dsn = _dsn(url)
        self._min_pool = min_pool
        self._max_pool = max_pool
        self._schema = schema
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("PostgresStore.start() has not been called")
        return self._pool

    async def start(self) -> None:
        if self._pool is not None:
            return
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=self._min_pool,
            max_size=self._max_pool,
            init=self._init_connection,
            server_settings={"search_path": self._schema} if self._schema else None,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            # Several processes may start at once; CREATE … IF NOT EXISTS is not race-free.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('monitoring_store_schema'))")
            if self._schema:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
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

    async def rebuild_rollups(self) -> None:
        """Rebuild the hourly rollups from all windows (after loading windows in bulk by other
        means than :meth:`upsert_windows`, e.g. COPY)."""
        async with self.pool.acquire() as conn:
            await rebuild_rollups(conn)

    @staticmethod
    async def _init_connection(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec(
            "jsonb",
            encoder=lambda v: msgspec.json.encode(v).decode(),
            decoder=msgspec.json.decode,
            schema="pg_catalog",
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # -- writes -----------------------------------------------------------------------------
    async def upsert_windows(self, windows: Sequence[WindowStats]) -> None:
        rows = dedupe_windows(windows)
        if not rows:
            return
        hours = sorted(
            {
                (w.device_id, w.window_seconds, math.floor(w.window_start / 3600) * 3600.0)
                for w in rows
                if _rolled_up(w.window_seconds)
            }
        )
        async with self.pool.acquire() as conn, conn.transaction():
            if hours:
                # One writer per device at a time from here to commit, so that the rollup of an
                # hour is recomputed after every other writer's windows of it are visible.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k",
                    sorted({_device_lock(d) for d, _, _ in hours}),
                )
            for part in _chunks(len(rows)):
                chunk = rows[part]
                await conn.execute(
                    _WINDOW_UPSERT,
                    [w.device_id for w in chunk],
                    [w.metric for w in chunk],
                    [w.window_seconds for w in chunk],
                    [w.window_start for w in chunk],
                    [w.count for w in chunk],
                    [w.min for w in chunk],
                    [w.max for w in chunk],
                    [w.mean for w in chunk],
                    [w.stddev for w in chunk],
                    [w.p50 for w in chunk],
                    [w.p95 for w in chunk],
                    [w.last for w in chunk],
                    [w.last_ts for w in chunk],
                    [w.final for w in chunk],
                    [w.updated_at for w in chunk],
                )
            if hours:
                await _refresh_rollups(conn, hours)

    async def insert_samples(self, batch: SampleBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        async with self.pool.acquire() as conn:
            for part in _reading_chunks(batch):
                await conn.execute(
                    _SAMPLE_INSERT,
                    batch.device_id[part].tolist(),
                    batch.metric[part].tolist(),
                    batch.ts[part].tolist(),
                    batch.value[part].tolist(),
                    batch.seq[part].tolist(),
                )

    async def upsert_alerts(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        # Same alert twice in one statement is not allowed; order by updated_at and apply the
        # duplicates in later statements so the lifecycle rules still see every state.
        rounds: list[list[Alert]] = []
        seen: dict[str, int] = {}
        for a in sorted(alerts, key=lambda a: a.updated_at):
            idx = seen.get(a.alert_id, -1) + 1
            seen[a.alert_id] = idx
            if idx == len(rounds):
                rounds.append([])
            rounds[idx].append(a)
        async with self.pool.acquire() as conn, conn.transaction():
            for group in rounds:
                await conn.execute(
                    _ALERT_UPSERT, *[[getattr(a, c) for a in group] for c in _ALERT_COLS]
                )

    async def upsert_device_rules(self, rules: Sequence[DeviceRules]) -> None:
        latest: dict[str, DeviceRules] = {}
        for r in rules:
            prev = latest.get(r.device_id)
            if prev is None or r.version >= prev.version:
                latest[r.device_id] = r
        if not latest:
            return
        rows = list(latest.values())
        await self.pool.execute(
            _RULES_UPSERT,
            [r.device_id for r in rows],
            [r.owner_id for r in rows],
            [r.device_type for r in rows],
            [json.dumps(r.config) for r in rows],
            [r.version for r in rows],
            [r.active for r in rows],
        )

    async def load_device_rules(self) -> list[DeviceRules]:
        rows = await self.pool.fetch(
            "SELECT device_id, owner_id, device_type, config, version, active "
            "FROM monitoring_device_rules ORDER BY device_id"
        )
        return [
            DeviceRules(
                device_id=r["device_id"],
                owner_id=r["owner_id"],
                device_type=r["device_type"],
                config=r["config"],
                version=r["version"],
                active=r["active"],
            )
            for r in rows
        ]

    async def delete_samples_before(self, ts: float) -> int:
        """Retention: drop readings older than ``ts``; returns the number of samples dropped."""
        deleted = await self.pool.fetchval(
            "WITH d AS (DELETE FROM monitoring_samples WHERE ts < $1 "
            "RETURNING cardinality(vals) AS n) SELECT coalesce(sum(n), 0) FROM d",
            ts,
        )
        return int(deleted)

    async def delete_windows_before(self, ts: float, *, window_seconds: int | None = None) -> int:
        """Retention for windows: drop those starting before ``ts`` (of one size, or all)."""
        if window_seconds is None:
            status = await self.pool.execute(
                "DELETE FROM monitoring_windows WHERE window_start < $1", ts
            )
        else:
            status = await self.pool.execute(
                "DELETE FROM monitoring_windows WHERE window_seconds = $1 AND window_start < $2",
                window_seconds,
                ts,
            )
        return int(status.split()[-1])

    # -- reads ------------------------------------------------------------------------------
    async def query_samples(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start: float,
        end: float,
        limit: int = 10_000,
    ) -> list[Sample]:
        """Samples with ``start <= ts < end``, oldest first (by ts, seq, metric)."""
        rows = await self.pool.fetch(
            f"{_SAMPLE_ROWS} WHERE s.device_id = $1 AND s.ts >= $2 AND s.ts < $3 "
            "AND ($4::text[] IS NULL OR u.metric = ANY($4::text[])) "
            "ORDER BY s.ts, s.seq, u.metric LIMIT $5",
            device_id,
            start,
            end,
            list(metrics) if metrics is not None else None,
            limit,
        )
        return [_sample_from(r) for r in rows]

    async def recent_samples(
        self,
        *,
        device_ids: Sequence[str] | None,
        metric: str | None = None,
        since: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Sample]:
        """Newest samples first across devices (``None`` = every device), paginated."""
        if device_ids is not None and not device_ids:
            return []
        if device_ids is None:
            # The whole fleet, newest first, has no index to walk (ts has only a BRIN index,
            # which keeps the write path cheap). Look back over growing spans instead: the BRIN
            # index confines each try to recent blocks, and once a span holds a full page the
            # page is exact (every newer sample is inside it). The last try is unbounded.
            query = (
                f"{_SAMPLE_ROWS} WHERE ($1::text IS NULL OR u.metric = $1) "
                "AND ($2::float8 IS NULL OR s.ts >= $2) "
                "ORDER BY s.ts DESC, s.device_id, s.seq DESC, u.metric LIMIT $3"
            )
            wanted = limit + offset
            now = time.time()
            tries: list[float | None] = [
                now - span for span in RECENT_SPANS if since is None or now - span > since
            ]
            tries.append(since)
            rows = []
            for lower in tries:
                rows = await self.pool.fetch(query, metric, lower, wanted)
                if len(rows) >= wanted:
                    break
            rows = rows[offset:]
        else:
            # Newest (limit + offset) per device from its own primary-key range, then merged.
            rows = await self.pool.fetch(
                "SELECT r.* FROM unnest($1::text[]) AS d(id) CROSS JOIN LATERAL ("
                f"  {_SAMPLE_ROWS}"
                "  WHERE s.device_id = d.id AND ($2::text IS NULL OR u.metric = $2)"
                "  AND ($3::float8 IS NULL OR s.ts >= $3)"
                "  ORDER BY s.ts DESC, s.seq DESC, u.metric LIMIT $4) AS r "
                "ORDER BY r.ts DESC, r.device_id, r.seq DESC, r.metric LIMIT $5 OFFSET $6",
                sorted(set(device_ids)),
                metric,
                since,
                limit + offset,
                limit,
                offset,
            )
        return [_sample_from(r) for r in rows]

    async def query_windows(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        window_seconds: int,
        start: float,
        end: float,
    ) -> list[WindowStats]:
        """Windows with ``start <= window_start < end``, ordered by metric then start."""
        rows = await self.pool.fetch(
            f"SELECT {_WINDOW_COLS} FROM monitoring_windows "
            "WHERE device_id = $1 AND window_seconds = $2 "
            "AND window_start >= $3 AND window_start < $4 "
            "AND ($5::text[] IS NULL OR metric = ANY($5::text[])) "
            "ORDER BY window_start, metric",  # index order: no sort step
            device_id,
            window_seconds,
            start,
            end,
            list(metrics) if metrics is not None else None,
        )
        rows.sort(key=_second)  # stable: by metric, then window_start
        return [WindowStats(*r) for r in rows]  # columns in WindowStats field order

    async def aggregate_windows(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start: float,
        end: float,
        bucket_seconds: int,
        source_window_seconds: int,
    ) -> list[Bucket]:
        """Windows of ``source_window_seconds`` starting in [start, end) re-aggregated into
        epoch-aligned buckets of ``bucket_seconds``, ordered by metric then bucket start."""
        series = await self.aggregate_window_series(
            device_id,
            metrics=metrics,
            start=start,
            end=end,
            bucket_seconds=bucket_seconds,
            source_window_seconds=source_window_seconds,
        )
        return buckets_from_series(device_id, series)

    async def aggregate_window_series(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start: float,
        end: float,
        bucket_seconds: int,
        source_window_seconds: int,
    ) -> list[BucketSeries]:
        """:meth:`aggregate_windows` as one column set per metric, ordered by metric."""
        check_bucket_sizes(bucket_seconds, source_window_seconds)
        metric_list = list(metrics) if metrics is not None else None
        if bucket_seconds != source_window_seconds:
            rows = await self.pool.fetch(
                _AGGREGATE,
                device_id,
                source_window_seconds,
                start,
                end,
                float(bucket_seconds),
                metric_list,
                bucket_seconds,
            )
            # Columns come in Bucket's field order (after device_id).
            return series_from_buckets([Bucket(device_id, *r) for r in rows], bucket_seconds)
        # One window per bucket: the windows are the answer, percentiles exact.
        row = await self.pool.fetchrow(
            _WINDOWS_AS_COLUMNS, device_id, source_window_seconds, start, end, metric_list
        )
        assert row is not None  # an aggregate without GROUP BY always gives one row
        names: list[str] = row[0] or []
        cols = [
            _binary_array(
                raw, _I8_ELEMENTS if i == 1 else _F8_ELEMENTS, np.int64 if i == 1 else np.float64
            )
            for i, raw in enumerate(row[1:])
        ]
        distinct = sorted(set(names))
        picks: list[Any]
        if len(distinct) > 1:
            metric_of = np.array(names, dtype=object)
            picks = [np.flatnonzero(metric_of == m) for m in distinct]
        else:
            picks = [slice(None)] * len(distinct)
        out = []
        for m, pick in zip(distinct, picks, strict=True):
            picked: dict[str, npt.NDArray[Any]] = {
                name: c[pick] for name, c in zip(BUCKET_COLUMNS, cols, strict=True)
            }
            exact = np.ones(len(picked["bucket_start"]), np.bool_)
            out.append(BucketSeries(m, bucket_seconds, **picked, exact_percentiles=exact))
        return out

    async def _window_sizes(
        self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
    ) -> list[int]:
        # Loose index scan over (window_seconds, window_start): one probe per distinct size.
        rows = await conn.fetch(
            """
            WITH RECURSIVE s(ws) AS (
                (SELECT window_seconds FROM monitoring_windows ORDER BY window_seconds LIMIT 1)
                UNION ALL
                SELECT (SELECT window_seconds FROM monitoring_windows
                        WHERE window_seconds > s.ws ORDER BY window_seconds LIMIT 1)
                FROM s WHERE s.ws IS NOT NULL
            )
            SELECT ws FROM s WHERE ws IS NOT NULL
            """
        )
        return [r["ws"] for r in rows]

    async def fleet_summary(
        self,
        *,
        device_ids: Sequence[str] | None,
        start: float,
        end: float,
        window_seconds: int | None = None,
        use_rollups: bool = True,
    ) -> FleetSummary:
        """Fleet figures over windows starting in [start, end).

        Computed from stored windows (raw samples may be switched off), of ``window_seconds``
        or, when not given, the finest stored size for ranges up to 6 hours and the coarsest
        for longer ones (fewer rows; edge windows matter little there). ``readings`` counts a
        reading once even when it carries several metrics: per device and window it is the
        largest count among that device's metrics. Whole hours inside the range come from
        the hourly rollups of windows of a minute or more (``use_rollups=False`` reads every
        window instead; same figures).
        """
        if device_ids is not None and not device_ids:
            return FleetSummary(
                start=start, end=end, devices_reporting=0, readings=0, readings_per_second=0.0
            )
        ids = sorted(set(device_ids)) if device_ids is not None else None
        async with self.pool.acquire() as conn, conn.transaction():
            # Fleet-wide scans: hash aggregates in memory rather than spilling sorts to disk,
            # and no JIT compile (it costs more than it saves at these sizes).
            await conn.execute("SET LOCAL work_mem = '64MB'; SET LOCAL jit = off")
            ws = window_seconds
            if ws is None:
                sizes = await self._window_sizes(conn)
                if sizes:
                    ws = sizes[0] if end - start <= 6 * 3600 else sizes[-1]
            metrics: list[MetricSummary] = []
            devices = 0
            readings = 0
            if ws is not None:
                h1, h2 = math.ceil(start / 3600) * 3600.0, math.floor(end / 3600) * 3600.0
                if not (use_rollups and _rolled_up(ws) and h2 > h1):
                    h1 = h2 = end  # no whole hour inside: every window from the table
                # Windows starting in [start, h1) and [h2, end); whole hours [h1, h2) from the
                # hourly rollups (the same sums over the same windows, a 60th of the rows).
                edge = (
                    "window_seconds = $1 AND ($4::text[] IS NULL OR device_id = ANY($4::text[])) "
                    "AND count > 0 AND window_start >= {lo} AND window_start < {hi}"
                )
                edges = [edge.format(lo="$2", hi="$5"), edge.format(lo="$6", hi="$3")]
                hourly = (
                    "window_seconds = $1 AND hour_start >= $5 AND hour_start < $6 "
                    "AND ($4::text[] IS NULL OR device_id = ANY($4::text[]))"
                )
                args = (ws, start, end, ids, h1, h2)
                parts = " UNION ALL ".join(
                    f"SELECT metric, count AS n, min AS lo, max AS hi, count * mean AS s "
                    f"FROM monitoring_windows WHERE {e}"
                    for e in edges
                )
                mrows = await conn.fetch(
                    "SELECT metric, sum(n) AS n, min(lo) AS lo, max(hi) AS hi, "
                    f"sum(s) / sum(n) AS m FROM ({parts} UNION ALL "
                    "SELECT metric, count, min, max, sum FROM monitoring_hourly "
                    f"WHERE {hourly}) AS x GROUP BY metric ORDER BY metric",
                    *args,
                )
                metrics = [
                    MetricSummary(
                        metric=r["metric"], count=int(r["n"]), min=r["lo"], max=r["hi"], mean=r["m"]
                    )
                    for r in mrows
                ]
                per_window = " UNION ALL ".join(
                    "SELECT device_id, max(count) AS n FROM monitoring_windows "
                    f"WHERE {e} GROUP BY device_id, window_start"
                    for e in edges
                )
                drow = await conn.fetchrow(
                    "SELECT count(*) AS devices, coalesce(sum(n), 0) AS readings FROM ("
                    "  SELECT device_id, sum(n) AS n FROM ("
                    f"    {per_window} UNION ALL SELECT device_id, readings "
                    f"    FROM monitoring_hourly_devices WHERE {hourly}"
                    "  ) AS per_part GROUP BY device_id"
                    ") AS per_device",
                    *args,
                )
                assert drow is not None
                devices = int(drow["devices"])
                readings = int(drow["readings"])
            arows = await conn.fetch(
                "SELECT severity, count(*) AS n FROM monitoring_alerts "
                "WHERE started_at >= $1 AND started_at < $2 "
                "AND ($3::text[] IS NULL OR device_id = ANY($3::text[])) GROUP BY severity",
                start,
                end,
                ids,
            )
        span = end - start
        return FleetSummary(
            start=start,
            end=end,
            devices_reporting=devices,
            readings=readings,
            readings_per_second=readings / span if span > 0 else 0.0,
            metrics=metrics,
            alerts_by_severity={r["severity"]: int(r["n"]) for r in arows},
        )

    async def query_alerts(
        self,
        *,
        device_ids: Sequence[str] | None = None,
        status: str | None = None,
        min_severity: str | None = None,
        start: float | None = None,
        end: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Alert]:
        """Alerts newest first; ``start``/``end`` bound ``started_at`` (end exclusive)."""
        if device_ids is not None and not device_ids:
            return []
        severities = severities_at_least(min_severity) if min_severity is not None else None
        rows = await self.pool.fetch(
            f"SELECT {', '.join(_ALERT_COLS)} FROM monitoring_alerts "
            "WHERE ($1::text[] IS NULL OR device_id = ANY($1::text[])) "
            "AND ($2::text IS NULL OR status = $2) "
            "AND ($3::text[] IS NULL OR severity = ANY($3::text[])) "
            "AND ($4::float8 IS NULL OR started_at >= $4) "
            "AND ($5::float8 IS NULL OR started_at < $5) "
            "ORDER BY started_at DESC, alert_id LIMIT $6 OFFSET $7",
            list(device_ids) if device_ids is not None else None,
            status,
            severities,
            start,
            end,
            limit,
            offset,
        )
        return [_alert_from(r) for r in rows]

    async def get_alert(self, alert_id: str) -> Alert | None:
        row = await self.pool.fetchrow(
            f"SELECT {', '.join(_ALERT_COLS)} FROM monitoring_alerts WHERE alert_id = $1",
            alert_id,
        )
        return _alert_from(row) if row is not None else None

    async def transition_alert(
        self, alert_id: str, *, status: str, by: str | None, at: float
    ) -> Alert | None:
        """Move an alert forward (active → acknowledged → cleared, or active → cleared).

        Asking for the status it already has returns it unchanged (idempotent); asking to
        move backwards raises :class:`AlertTransitionError`. None if the alert is unknown.
        """
        if status not in ("acknowledged", "cleared"):
            raise ValueError(f"cannot transition an alert to {status!r}")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {', '.join(_ALERT_COLS)} FROM monitoring_alerts "
                "WHERE alert_id = $1 FOR UPDATE",
                alert_id,
            )
            if row is None:
                return None
            current = _alert_from(row)
            if current.status == status:
                return current
            if STATUS_RANK[status] < STATUS_RANK.get(current.status, 0):
                raise AlertTransitionError(current, status)
            if status == "acknowledged":
                new = await conn.fetchrow(
                    "UPDATE monitoring_alerts SET status = 'acknowledged', acknowledged_at = $2, "
                    "acknowledged_by = $3, updated_at = greatest(updated_at, $2) "
                    f"WHERE alert_id = $1 RETURNING {', '.join(_ALERT_COLS)}",
                    alert_id,
                    at,
                    by,
                )
            else:
                new = await conn.fetchrow(
                    "UPDATE monitoring_alerts SET status = 'cleared', cleared_at = $2, "
                    "updated_at = greatest(updated_at, $2) "
                    f"WHERE alert_id = $1 RETURNING {', '.join(_ALERT_COLS)}",
                    alert_id,
                    at,
                )
            assert new is not None
            return _alert_from(new)

    # -- subscriptions and deliveries -------------------------------------------------------
    async def create_subscription(self, sub: Subscription) -> None:
        await self.pool.execute(
            "INSERT INTO monitoring_subscriptions "
            "(id, owner_id, url, secret, device_ids, min_severity, rule_types, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            sub.id,
            sub.owner_id,
            sub.url,
            sub.secret,
            sub.device_ids,
            sub.min_severity,
            sub.rule_types,
            sub.created_at,
        )

    async def list_subscriptions(self, *, owner_id: str | None) -> list[Subscription]:
        rows = await self.pool.fetch(
            "SELECT * FROM monitoring_subscriptions WHERE ($1::text IS NULL OR owner_id = $1) "
            "ORDER BY created_at, id",
            owner_id,
        )
        return [_subscription_from(r) for r in rows]

    async def get_subscription(self, sub_id: str) -> Subscription | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM monitoring_subscriptions WHERE id = $1", sub_id
        )
        return _subscription_from(row) if row is not None else None

    async def delete_subscription(self, sub_id: str, *, owner_id: str | None) -> bool:
        status = await self.pool.execute(
            "DELETE FROM monitoring_subscriptions WHERE id = $1 "
            "AND ($2::text IS NULL OR owner_id = $2)",
            sub_id,
            owner_id,
        )
        return status != "DELETE 0"

    async def enqueue_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        # A delivery for a subscription deleted meanwhile is dropped rather than failing
        # the whole batch on the foreign key.
        await self.pool.execute(
            f"INSERT INTO monitoring_deliveries ({_DELIVERY_COLS}) "
            "SELECT u.* FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], "
            "$5::integer[], $6::float8[], $7::text[], $8::float8[], $9::float8[]) "
            "AS u(id, subscription_id, payload, status, attempts, next_attempt_at, last_error, "
            "created_at, updated_at) "
            "WHERE EXISTS (SELECT 1 FROM monitoring_subscriptions s "
            "              WHERE s.id = u.subscription_id) "
            "ON CONFLICT (id) DO NOTHING",
            [d.id for d in deliveries],
            [d.subscription_id for d in deliveries],
            [d.payload for d in deliveries],
            [d.status for d in deliveries],
            [d.attempts for d in deliveries],
            [d.next_attempt_at for d in deliveries],
            [d.last_error for d in deliveries],
            [d.created_at for d in deliveries],
            [d.updated_at for d in deliveries],
        )

    async def due_deliveries(
        self, *, now: float, limit: int, lease_seconds: float = 0.0
    ) -> list[Delivery]:
        """Pending deliveries whose ``next_attempt_at`` has come, oldest first.

        With ``lease_seconds`` > 0 the returned deliveries are claimed: their
        ``next_attempt_at`` moves to ``now + lease_seconds`` in the same statement (rows
        another instance is claiming are skipped), so several API instances never send the
        same delivery at once; the caller then records the outcome with ``update_delivery``.
        """
        if lease_seconds > 0:
            rows = await self.pool.fetch(
                f"UPDATE monitoring_deliveries d SET next_attempt_at = $1 + $3 "
                f"FROM (SELECT id FROM monitoring_deliveries "
                f"      WHERE status = 'pending' AND next_attempt_at <= $1 "
                f"      ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) due "
                f"WHERE d.id = due.id "
                f"RETURNING {', '.join('d.' + c.strip() for c in _DELIVERY_COLS.split(','))}",
                now,
                limit,
                lease_seconds,
            )
            return sorted((_delivery_from(r) for r in rows), key=lambda d: d.created_at)
        rows = await self.pool.fetch(
            f"SELECT {_DELIVERY_COLS} FROM monitoring_deliveries "
            "WHERE status = 'pending' AND next_attempt_at <= $1 "
            "ORDER BY next_attempt_at, created_at LIMIT $2",
            now,
            limit,
        )
        return [_delivery_from(r) for r in rows]

    async def update_delivery(self, delivery: Delivery) -> None:
        await self.pool.execute(
            "UPDATE monitoring_deliveries SET status = $2, attempts = $3, next_attempt_at = $4, "
            "last_error = $5, updated_at = $6, payload = $7 WHERE id = $1",
            delivery.id,
            delivery.status,
            delivery.attempts,
            delivery.next_attempt_at,
            delivery.last_error,
            delivery.updated_at,
            delivery.payload,
        )

    async def list_deliveries(
        self, *, subscription_id: str, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        """A subscription's deliveries, newest first."""
        rows = await self.pool.fetch(
            f"SELECT {_DELIVERY_COLS} FROM monitoring_deliveries "
            "WHERE subscription_id = $1 AND ($2::text IS NULL OR status = $2) "
            "ORDER BY created_at DESC, id LIMIT $3",
            subscription_id,
            status,
            limit,
        )
        return [_delivery_from(r) for r in rows]
