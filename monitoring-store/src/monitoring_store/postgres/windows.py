"""Window statistics on PostgreSQL: upserts, range reads, re-aggregation, fleet figures."""

# SQL text here is assembled only from module constants; every value goes as a $n parameter.
# ruff: noqa: S608

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from iot_common.events import WindowStats
from monitoring_store.base import (
    BUCKET_COLUMNS,
    Bucket,
    BucketSeries,
    FleetSummary,
    MetricSummary,
    buckets_from_series,
    check_bucket_sizes,
    dedupe_windows,
    series_from_buckets,
    window_size_for_range,
)
from monitoring_store.postgres.connection import PgConnection, _chunks
from monitoring_store.postgres.rollups import (
    _device_lock,
    _refresh_rollups,
    _rolled_up,
    rebuild_rollups,
)

_WINDOW_COLS = (
    "device_id, metric, window_seconds, window_start, count, min, max, mean, stddev, "
    "p50, p95, last, last_ts, final, updated_at"
)


# The same statement moves each device × metric's latest value (``monitoring_latest``, the fleet
# table's last values and its order) forward to the newest reading these windows saw (never
# back: a replayed or corrected older window leaves a newer value), in key order, so concurrent
# writers lock its rows in one order. It rides on the window writes, not the sample writes:
# windows are written with raw samples off too, and there are far fewer of them.
_WINDOW_UPSERT = f"""
WITH w AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::float8[], $5::bigint[],
                         $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[],
                         $11::float8[], $12::float8[], $13::float8[], $14::boolean[],
                         $15::float8[])
        AS u({_WINDOW_COLS})
), stored AS (
    INSERT INTO monitoring_windows ({_WINDOW_COLS})
    SELECT * FROM w
    ON CONFLICT (device_id, window_seconds, window_start, metric) DO UPDATE SET
        count = EXCLUDED.count, min = EXCLUDED.min, max = EXCLUDED.max, mean = EXCLUDED.mean,
        stddev = EXCLUDED.stddev, p50 = EXCLUDED.p50, p95 = EXCLUDED.p95, last = EXCLUDED.last,
        last_ts = EXCLUDED.last_ts, final = EXCLUDED.final, updated_at = EXCLUDED.updated_at
    WHERE monitoring_windows.updated_at <= EXCLUDED.updated_at
)
INSERT INTO monitoring_latest AS l (device_id, metric, ts, value)
SELECT DISTINCT ON (device_id, metric) device_id, metric, last_ts, last
FROM w WHERE count > 0
ORDER BY device_id, metric, last_ts DESC
ON CONFLICT (device_id, metric) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value
WHERE l.ts < EXCLUDED.ts
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


_second = itemgetter(1)


class PgWindows(PgConnection):
    """Windows: ``monitoring_windows`` (and the rollups it keeps current)."""

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
            # The batch's rows, the latest values' sort and the rollups' groups in memory (at
            # the default 4 MB, 50,000 windows spilled all three to temporary files), and no
            # JIT: the rollups' estimates are far above their cost, and compiling took 1 s.
            await conn.execute("SET LOCAL work_mem = '64MB'; SET LOCAL jit = off")
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

    async def delete_windows_before(self, ts: float, *, window_seconds: int | None = None) -> int:
        """Retention for windows: drop those starting before ``ts`` (of one size, or all)."""
        if window_seconds is None:
            # Every size goes: so does a latest value no window holds any more.
            status = await self.pool.execute(
                "WITH l AS (DELETE FROM monitoring_latest WHERE ts < $1) "
                "DELETE FROM monitoring_windows WHERE window_start < $1",
                ts,
            )
        else:
            status = await self.pool.execute(
                "DELETE FROM monitoring_windows WHERE window_seconds = $1 AND window_start < $2",
                window_seconds,
                ts,
            )
        return int(status.split()[-1])

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
        self,
        conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        start: float,
        end: float,
    ) -> list[int]:
        """The window sizes with a window starting in [start, end), ascending (a size no
        longer computed, or not yet, does not hide the others)."""
        # Loose index scan over (window_seconds, window_start): two probes per distinct size.
        rows = await conn.fetch(
            """
            WITH RECURSIVE s(ws) AS (
                (SELECT window_seconds FROM monitoring_windows ORDER BY window_seconds LIMIT 1)
                UNION ALL
                SELECT (SELECT window_seconds FROM monitoring_windows
                        WHERE window_seconds > s.ws ORDER BY window_seconds LIMIT 1)
                FROM s WHERE s.ws IS NOT NULL
            )
            SELECT ws FROM s WHERE ws IS NOT NULL AND EXISTS (
                SELECT 1 FROM monitoring_windows
                WHERE window_seconds = s.ws AND window_start >= $1 AND window_start < $2
            )
            """,
            start,
            end,
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
                ws = window_size_for_range(await self._window_sizes(conn, start, end), start, end)
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

    async def rebuild_rollups(self) -> None:
        """Rebuild the hourly rollups from all windows (after loading windows in bulk by other
        means than :meth:`upsert_windows`, e.g. COPY)."""
        async with self.pool.acquire() as conn:
            await rebuild_rollups(conn)
