"""Hourly rollups of the coarse windows: what fleet figures over long ranges read."""

# SQL text here is assembled only from module constants; every value goes as a $n parameter.
# ruff: noqa: S608

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import asyncpg

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


# The windows of each key: one range scan of the primary key per key. The row comparisons can
# only be bounds on an index led by (device_id, window_seconds, window_start), and ``OFFSET 0``
# keeps the planner from flattening the subquery into a join. Written as plain equalities and
# a range, on a table whose statistics lag its growth (every new store; any table between
# autovacuum's analyses) the planner chose the (window_seconds, window_start) index, i.e. every
# device's windows of the hour once per key: 5.3 s for 2,000 device-hours out of 60,000
# windows, 0.13 s this way; or a merge join over the whole table, sorted, on every refresh.
_ROLLUP_REFRESH_SOURCE = f"""
SELECT w.window_seconds, k.h, w.device_id, w.metric, w.window_start, w.count, w.min, w.max,
       w.mean
FROM {_KEYS}
CROSS JOIN LATERAL (
    SELECT window_seconds, device_id, metric, window_start, count, min, max, mean
    FROM monitoring_windows
    WHERE (device_id, window_seconds, window_start) >= (k.d, k.ws, k.h)
      AND (device_id, window_seconds, window_start) < (k.d, k.ws, k.h + 3600) AND count > 0
    OFFSET 0
) AS w
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


# Both rollups from one read of the keys' windows.
_ROLLUP_REFRESH = (
    *(_ROLLUP_DELETE.format(table=t) for t in ("monitoring_hourly", "monitoring_hourly_devices")),
    f"WITH keyed AS MATERIALIZED ({_ROLLUP_REFRESH_SOURCE}), hourly AS ("
    f"{_ROLLUP_INSERTS[0].format(source='SELECT * FROM keyed')}) "
    f"{_ROLLUP_INSERTS[1].format(source='SELECT * FROM keyed')}",
)


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
