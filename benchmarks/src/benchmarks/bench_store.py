"""Monitoring store benchmark: bulk write throughput and rolling-stats query latency, on each
backend in one run (PostgreSQL, then MongoDB), through the store's Protocol only.

The MongoDB backend runs on the MongoDB-compatible emulator the tests use (SecantusDB, a Python
server: ``MONGODB_URL``, else a private one started here), at smaller sizes (it writes about
1,500 documents/s); its figures are the emulator's, not MongoDB's, and say where the backend's
own work goes, not what a real ``mongod`` would do. ``BENCH_STORE_BACKENDS=postgres`` (or
``mongodb``) runs one backend only.

1. Bulk writes through the store API into a fresh database: ``upsert_windows`` (new windows,
   then the same batches replayed, i.e. all conflicts) and ``insert_samples`` (readings of 5
   metrics in batches of 10,000 readings). On PostgreSQL the raw-sample layout is measured too:
   the store's wide rows (one per reading) against the long layout (one row per metric value)
   fed the same batches the same way (``samples_layout``), which is how the layout was chosen.
2. PostgreSQL: a store holding ≥ 10,000,000 windows across 100 devices (5 metrics; 1-minute
   windows for 8 days and 10-second windows for the last day), loaded with binary ``COPY``
   built by numpy, in time order (as windows are produced: every device's windows of one period
   together), then the indexes built (the same covering key the store creates), ``VACUUM
   ANALYZE`` and ``rebuild_rollups`` (COPY bypasses ``upsert_windows``, which keeps them
   current). MongoDB: the same kind of store, smaller, written through ``upsert_windows`` in
   the same order. Reported: how long loading took.
3. Query latency through ``aggregate_window_series`` (what ``GET /monitoring/data/{id}`` calls), one
   query at a time, random device and random 24-hour range: 24 h at 1-minute buckets (all five
   metrics — the issue's figure, target p99 ≤ 50 ms — and one metric), 24 h at 1-hour buckets
   re-aggregated from 1-minute windows, 1 h at 10-second buckets. Also ``fleet_summary`` over
   the whole fleet for the last 5 minutes, hour and day.

Run: ``uv run benchmarks store`` (``--quick`` for small stores). The databases
(``iot_bench_store``) are dropped at the end unless ``BENCH_STORE_KEEP=1``; then
``--queries-only`` re-measures the queries on the kept PostgreSQL one without reloading (drop it
afterwards with ``psql -c 'DROP DATABASE iot_bench_store'``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pathlib
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from iot_common.events import WindowStats
from iotctl.testinfra import (
    create_database,
    database_url,
    drop_database,
    mongodb_server,
    percentiles,
)
from monitoring_store import MonitoringStore, SampleBatch, open_store

DB_NAME = "iot_bench_store"
METRICS = ("temperature", "humidity", "pressure", "battery", "rssi")
T0 = 1_789_948_800.0  # UTC midnight

F64 = npt.NDArray[np.float64]
BACKENDS = ("postgres", "mongodb")
#: What the MongoDB figures were measured on (see iotctl.sandbox).
EMULATOR = "SecantusDB 0.7.0b3 (a MongoDB-compatible emulator in Python on WiredTiger)"


@dataclass(frozen=True)
class Sizes:
    """How much each part writes and asks, per backend (the emulator is ~50× slower)."""

    write_devices: int
    write_periods: int
    sample_readings: int
    big_devices: int
    days_1m: int
    hours_10s: int
    iterations: int


SIZES = {
    ("postgres", False): Sizes(1000, 60, 500_000, 100, 8, 24, 300),
    ("postgres", True): Sizes(1000, 10, 100_000, 100, 2, 1, 50),
    ("mongodb", False): Sizes(100, 10, 20_000, 10, 2, 1, 30),
    # A quick run's queries: one 24 h query at 1-min buckets aggregates 7,200 windows in the
    # emulator's Python pipeline, seconds each on a loaded machine.
    ("mongodb", True): Sizes(50, 4, 4_000, 2, 1, 1, 3),
}


def _db_url() -> str:
    return database_url(DB_NAME)


# -- 1. bulk writes through the API ----------------------------------------------------------
def _windows(n_devices: int, per_series: int, size: int, t0: float, seed: int) -> list[WindowStats]:
    rng = np.random.default_rng(seed)
    devices = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n_devices)]
    out: list[WindowStats] = []
    for k in range(per_series):
        ws = t0 + k * size
        for d in devices:
            for m in METRICS:
                mean = float(rng.normal(20, 5))
                out.append(
                    WindowStats(
                        device_id=d,
                        metric=m,
                        window_seconds=size,
                        window_start=ws,
                        count=60,
                        min=mean - 3,
                        max=mean + 3,
                        mean=mean,
                        stddev=1.0,
                        p50=mean,
                        p95=mean + 1.6,
                        last=mean + 0.5,
                        last_ts=ws + size - 0.5,
                        updated_at=ws + size + 2,
                    )
                )
    return out


def _sample_batches(n_readings: int, batch_readings: int, n_devices: int) -> list[SampleBatch]:
    rng = np.random.default_rng(3)
    devices = np.array([str(uuid.UUID(int=i + 1)) for i in range(n_devices)], dtype=object)
    names = np.array(METRICS, dtype=object)
    k = len(METRICS)
    out = []
    for b in range(n_readings // batch_readings):
        dev = devices[rng.integers(0, n_devices, batch_readings)]
        ts = T0 + (b * batch_readings + np.arange(batch_readings)) * 0.001
        seq = b * batch_readings + np.arange(batch_readings, dtype=np.int64)
        out.append(
            SampleBatch(
                device_id=np.repeat(dev, k),
                metric=np.tile(names, batch_readings),
                ts=np.repeat(ts, k),
                value=rng.normal(20, 5, batch_readings * k),
                seq=np.repeat(seq, k),
            )
        )
    return out


_LONG_DDL = """
CREATE TABLE IF NOT EXISTS bench_samples_long (
    device_id text NOT NULL, ts double precision NOT NULL, seq bigint NOT NULL,
    metric text NOT NULL, value double precision NOT NULL,
    PRIMARY KEY (device_id, ts, seq, metric));
CREATE INDEX IF NOT EXISTS bench_samples_long_ts ON bench_samples_long USING brin (ts);
"""
_LONG_INSERT = """
INSERT INTO bench_samples_long (device_id, metric, ts, value, seq)
SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::bigint[])
ON CONFLICT DO NOTHING
"""


async def _bench_writes(
    store: MonitoringStore, conn: asyncpg.Connection | None, sizes: Sizes
) -> dict[str, Any]:
    """Window and sample writes through the store; with ``conn`` (PostgreSQL) the raw-sample
    layouts are compared too."""
    res: dict[str, Any] = {}
    # windows: N devices × 5 metrics per period, one upsert per period (as the agents flush)
    wins = _windows(sizes.write_devices, sizes.write_periods, 10, T0, seed=1)
    per_batch = sizes.write_devices * len(METRICS)
    batches = [wins[i : i + per_batch] for i in range(0, len(wins), per_batch)]
    t = time.perf_counter()
    for b in batches:
        await store.upsert_windows(b)
    new_s = time.perf_counter() - t
    t = time.perf_counter()
    for b in batches:
        await store.upsert_windows(b)
    replay_s = time.perf_counter() - t
    res["windows"] = {
        "windows": len(wins),
        "batch": per_batch,
        "new_windows_per_s": round(len(wins) / new_s),
        "replayed_windows_per_s": round(len(wins) / replay_s),
    }

    n_readings = sizes.sample_readings
    batch_readings = min(10_000, n_readings)
    sbatches = _sample_batches(n_readings, batch_readings, 1000)
    k = len(METRICS)
    if conn is None:
        t = time.perf_counter()
        for sb in sbatches:
            await store.insert_samples(sb)
        wide_s = time.perf_counter() - t
        t = time.perf_counter()
        for sb in sbatches[:5]:
            await store.insert_samples(sb)
        replay_s = time.perf_counter() - t
        res["samples"] = {
            "readings": n_readings,
            "metrics_per_reading": k,
            "batch_readings": batch_readings,
            "samples_per_s": round(n_readings * k / wide_s),
            "readings_per_s": round(n_readings / wide_s),
            "replayed_samples_per_s": round(len(sbatches[:5]) * batch_readings * k / replay_s),
        }
        res["load_average_1m"] = os.getloadavg()[0]
        return res
    await conn.execute(_LONG_DDL)
    # The store's wide layout and the long baseline take turns batch by batch, so both see the
    # same machine load (other work shares this machine).
    wide_s = long_s = 0.0
    for sb in sbatches:
        t = time.perf_counter()
        await store.insert_samples(sb)
        wide_s += time.perf_counter() - t
        t = time.perf_counter()
        await conn.execute(
            _LONG_INSERT,
            sb.device_id.tolist(),
            sb.metric.tolist(),
            sb.ts.tolist(),
            sb.value.tolist(),
            sb.seq.tolist(),
        )
        long_s += time.perf_counter() - t
    t = time.perf_counter()
    for sb in sbatches[:5]:
        await store.insert_samples(sb)
    replay_s = time.perf_counter() - t
    wide_bytes = await conn.fetchval("SELECT pg_total_relation_size('monitoring_samples')")

    long_bytes = await conn.fetchval("SELECT pg_total_relation_size('bench_samples_long')")
    await conn.execute("DROP TABLE bench_samples_long")
    res["samples"] = {
        "readings": n_readings,
        "metrics_per_reading": k,
        "batch_readings": 10_000,
        "samples_per_s": round(n_readings * k / wide_s),
        "readings_per_s": round(n_readings / wide_s),
        "replayed_samples_per_s": round(5 * 10_000 * k / replay_s),
    }
    res["samples_layout"] = {
        "wide_rows": {
            "samples_per_s": round(n_readings * k / wide_s),
            "bytes_per_reading": round(wide_bytes / n_readings),
        },
        "long_rows": {
            "samples_per_s": round(n_readings * k / long_s),
            "bytes_per_reading": round(long_bytes / n_readings),
        },
        "wide_speedup": round(long_s / wide_s, 2),
    }
    res["load_average_1m"] = os.getloadavg()[0]
    return res


# -- 2. the 10M-window store, loaded with binary COPY ----------------------------------------
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_F8 = ("min", "max", "mean", "stddev", "p50", "p95", "last", "last_ts")


def _row_dtype(metric_len: int) -> np.dtype[Any]:
    fields: list[tuple[str, str]] = [
        ("nf", ">i2"),
        ("l_dev", ">i4"),
        ("dev", "S36"),
        ("l_met", ">i4"),
        ("met", f"S{metric_len}"),
        ("l_ws", ">i4"),
        ("ws", ">i4"),
        ("l_start", ">i4"),
        ("start", ">f8"),
        ("l_count", ">i4"),
        ("count", ">i8"),
    ]
    for f in _F8:
        fields += [(f"l_{f}", ">i4"), (f, ">f8")]
    fields += [("l_final", ">i4"), ("final", "u1"), ("l_upd", ">i4"), ("upd", ">f8")]
    return np.dtype(fields)


def _copy_block(
    devices: list[bytes], size: int, starts: F64, rng: np.random.Generator, base: F64
) -> bytes:
    """Binary COPY rows for windows at ``starts`` × devices × metrics, in time order."""
    n_t, n_d = len(starts), len(devices)
    per_metric: list[npt.NDArray[np.uint8]] = []
    for mi, m in enumerate(METRICS):
        name = m.encode()
        a = np.empty((n_t, n_d), dtype=_row_dtype(len(name)))
        a["nf"] = 15
        a["l_dev"], a["dev"] = 36, np.array(devices, dtype="S36")[None, :]
        a["l_met"], a["met"] = len(name), name
        a["l_ws"], a["ws"] = 4, size
        a["l_start"], a["start"] = 8, starts[:, None]
        a["l_count"] = 8
        a["count"] = rng.poisson(size * 1.0, (n_t, n_d)) + 1
        mean = base[None, :, mi] + rng.normal(0, 1, (n_t, n_d))
        sd = np.abs(rng.normal(1, 0.2, (n_t, n_d)))
        for f, v in (
            ("min", mean - 2.5 * sd),
            ("max", mean + 2.5 * sd),
            ("mean", mean),
            ("stddev", sd),
            ("p50", mean + rng.normal(0, 0.1, (n_t, n_d))),
            ("p95", mean + 1.64 * sd),
            ("last", mean + rng.normal(0, 1, (n_t, n_d)) * sd),
            ("last_ts", starts[:, None] + size - rng.uniform(0, 1, (n_t, n_d))),
        ):
            a[f"l_{f}"], a[f] = 8, v
        a["l_final"], a["final"] = 1, 1
        a["l_upd"], a["upd"] = 8, starts[:, None] + size + 2
        per_metric.append(a.reshape(-1).view(np.uint8).reshape(n_t * n_d, -1))
    # rows ordered (time, device, metric): the five metrics' rows of one device side by side
    return np.concatenate(per_metric, axis=1).tobytes()


def _big_devices(rng: np.random.Generator, n_devices: int) -> list[str]:
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n_devices)]


async def _load_big(
    store: MonitoringStore,
    conn: asyncpg.Connection,
    *,
    n_devices: int,
    days_1m: int,
    hours_10s: int,
) -> dict[str, Any]:
    rng = np.random.default_rng(11)
    devices = [d.encode() for d in _big_devices(rng, n_devices)]
    base = rng.uniform(0, 100, (n_devices, len(METRICS)))
    minutes = days_1m * 1440
    end = T0 + minutes * 60
    tens = hours_10s * 360
    total = n_devices * len(METRICS) * (minutes + tens)

    async def source() -> AsyncIterator[bytes]:
        yield _COPY_HEADER
        step = 200
        for i in range(0, minutes, step):
            starts = T0 + 60.0 * np.arange(i, min(i + step, minutes), dtype=np.float64)
            yield _copy_block(devices, 60, starts, rng, base)
        t10 = end - tens * 10
        for i in range(0, tens, step * 6):
            starts = t10 + 10.0 * np.arange(i, min(i + step * 6, tens), dtype=np.float64)
            yield _copy_block(devices, 10, starts, rng, base)
        yield _COPY_TRAILER

    await conn.execute(
        "ALTER TABLE monitoring_windows DROP CONSTRAINT monitoring_windows_pkey;"
        "DROP INDEX monitoring_windows_time;"
    )
    t = time.perf_counter()
    await conn.copy_to_table("monitoring_windows", source=source(), format="binary")
    copy_s = time.perf_counter() - t
    t = time.perf_counter()
    await conn.execute("SET maintenance_work_mem = '1GB'")
    await conn.execute(
        "ALTER TABLE monitoring_windows ADD CONSTRAINT monitoring_windows_pkey "
        "PRIMARY KEY (device_id, window_seconds, window_start, metric) INCLUDE "
        "(count, min, max, mean, stddev, p50, p95, last, last_ts, final, updated_at)"
    )
    await conn.execute(
        "CREATE INDEX monitoring_windows_time ON monitoring_windows (window_seconds, window_start)"
    )
    index_s = time.perf_counter() - t
    t = time.perf_counter()
    await conn.execute("VACUUM ANALYZE monitoring_windows")
    vacuum_s = time.perf_counter() - t
    t = time.perf_counter()
    await store.rebuild_rollups()  # COPY bypasses upsert_windows, which keeps them current
    await conn.execute("ANALYZE monitoring_hourly; ANALYZE monitoring_hourly_devices")
    rollup_s = time.perf_counter() - t
    count = await conn.fetchval("SELECT count(*) FROM monitoring_windows")
    assert count == total, (count, total)
    size = await conn.fetchval("SELECT pg_total_relation_size('monitoring_windows')")
    return {
        "windows": int(count),
        "devices": n_devices,
        "metrics": len(METRICS),
        "one_minute_days": days_1m,
        "ten_second_hours": hours_10s,
        "copy_s": round(copy_s, 1),
        "copy_rows_per_s": round(count / copy_s),
        "index_build_s": round(index_s, 1),
        "vacuum_analyze_s": round(vacuum_s, 1),
        "hourly_rollups_s": round(rollup_s, 1),
        "load_total_s": round(copy_s + index_s + vacuum_s + rollup_s, 1),
        "table_and_indexes_gb": round(size / 1e9, 2),
        "device_ids": [d.decode() for d in devices],
        "data_end": end,
    }


def _window_block(
    devices: list[str], size: int, starts: F64, rng: np.random.Generator, base: F64
) -> list[WindowStats]:
    """The windows of :func:`_copy_block` as ``WindowStats`` (time, device, metric order)."""
    out: list[WindowStats] = []
    for ws in starts.tolist():
        for di, d in enumerate(devices):
            for mi, m in enumerate(METRICS):
                mean = float(base[di, mi] + rng.normal(0, 1))
                sd = abs(float(rng.normal(1, 0.2)))
                out.append(
                    WindowStats(
                        device_id=d,
                        metric=m,
                        window_seconds=size,
                        window_start=ws,
                        count=int(rng.poisson(size * 1.0)) + 1,
                        min=mean - 2.5 * sd,
                        max=mean + 2.5 * sd,
                        mean=mean,
                        stddev=sd,
                        p50=mean + float(rng.normal(0, 0.1)),
                        p95=mean + 1.64 * sd,
                        last=mean + float(rng.normal(0, 1)) * sd,
                        last_ts=ws + size - float(rng.uniform(0, 1)),
                        updated_at=ws + size + 2,
                    )
                )
    return out


async def _load_big_through_store(
    store: MonitoringStore, *, n_devices: int, days_1m: int, hours_10s: int
) -> dict[str, Any]:
    """The same kind of store as :func:`_load_big`, written through ``upsert_windows`` (the
    backend's own bulk path: on MongoDB an unordered ``insert_many`` of new windows)."""
    rng = np.random.default_rng(11)
    devices = _big_devices(rng, n_devices)
    base = rng.uniform(0, 100, (n_devices, len(METRICS)))
    minutes = days_1m * 1440
    end = T0 + minutes * 60
    tens = hours_10s * 360
    total = 0
    t = time.perf_counter()
    step = max(1, 5000 // (n_devices * len(METRICS)))
    for i in range(0, minutes, step):
        starts = T0 + 60.0 * np.arange(i, min(i + step, minutes), dtype=np.float64)
        block = _window_block(devices, 60, starts, rng, base)
        await store.upsert_windows(block)
        total += len(block)
    t10 = end - tens * 10
    for i in range(0, tens, step):
        starts = t10 + 10.0 * np.arange(i, min(i + step, tens), dtype=np.float64)
        block = _window_block(devices, 10, starts, rng, base)
        await store.upsert_windows(block)
        total += len(block)
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    await store.rebuild_rollups()
    rollup_s = time.perf_counter() - t
    return {
        "windows": total,
        "devices": n_devices,
        "metrics": len(METRICS),
        "one_minute_days": days_1m,
        "ten_second_hours": hours_10s,
        "upsert_s": round(write_s, 1),
        "upsert_windows_per_s": round(total / write_s),
        "load_total_s": round(write_s + rollup_s, 1),
        "device_ids": devices,
        "data_end": end,
    }


# -- 3. query latency --------------------------------------------------------------------------
async def _bench_queries(
    store: MonitoringStore,
    conn: asyncpg.Connection | None,
    devices: list[str],
    *,
    data_end: float,
    days: int,
    iterations: int,
) -> dict[str, Any]:
    """Query latency through the store; with ``conn`` (PostgreSQL) also the server's own
    execution time of the main query (``EXPLAIN ANALYZE`` on the benchmark's connection)."""
    rng = np.random.default_rng(5)
    span_min = days * 1440

    def day_range() -> tuple[str, float, float]:
        d = devices[int(rng.integers(0, len(devices)))]
        start = T0 + 60.0 * int(rng.integers(0, span_min - 1440 + 1))
        return d, start, start + 86400

    def hour_range_10s() -> tuple[str, float, float]:
        d = devices[int(rng.integers(0, len(devices)))]
        start = data_end - 3600.0 * int(rng.integers(1, 2))
        return d, start, start + 3600

    kinds: dict[str, tuple[Any, dict[str, Any]]] = {
        "24h_1m_all_metrics": (day_range, {"bucket_seconds": 60, "source_window_seconds": 60}),
        "24h_1m_one_metric": (
            day_range,
            {"bucket_seconds": 60, "source_window_seconds": 60, "metrics": ["temperature"]},
        ),
        "24h_1h_all_metrics": (day_range, {"bucket_seconds": 3600, "source_window_seconds": 60}),
        "1h_10s_all_metrics": (
            hour_range_10s,
            {"bucket_seconds": 10, "source_window_seconds": 10},
        ),
    }
    out: dict[str, Any] = {}
    for name, (pick, kw) in kinds.items():
        kw = {"metrics": None, **kw}
        lat: list[float] = []
        cpu: list[float] = []
        rows = 0
        warm = min(10, iterations)
        for i in range(iterations + warm):
            d, start, end = pick()
            t = time.perf_counter()
            c = time.process_time()
            series = await store.aggregate_window_series(d, start=start, end=end, **kw)
            ms = (time.perf_counter() - t) * 1000
            if i >= warm:  # the first few warm the connection and the plan cache
                lat.append(ms)
                cpu.append((time.process_time() - c) * 1000)
                rows = sum(len(x) for x in series)
        out[name] = {
            **percentiles(lat, (50, 99), unit="_ms", mean=True),
            "client_cpu_p50_ms": round(float(np.median(cpu)), 2),
            "buckets_returned": rows,
            "latencies_ms": lat,
        }
    if conn is None:
        return out
    # Server-side execution time of the main query (the store's SQL for bucket == window).
    server: list[float] = []
    for _ in range(20):
        d, start, end = day_range()
        plan = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT metric, window_start, window_seconds, "
            "count, min, max, mean, stddev, p50, p95, last, true FROM monitoring_windows "
            "WHERE device_id = $1 AND window_seconds = 60 AND window_start >= $2 "
            "AND window_start < $3 AND count > 0 ORDER BY window_start, metric",
            d,
            start,
            end,
        )
        server.append(float(json.loads(plan)[0]["Execution Time"]))
    out["24h_1m_all_metrics"]["server_execution_p50_ms"] = round(float(np.median(server)), 2)
    return out


async def _bench_fleet(store: MonitoringStore, *, data_end: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, span in (("5min", 300), ("1h", 3600), ("24h", 86400)):
        lat = []
        for _ in range(6):
            t = time.perf_counter()
            s = await store.fleet_summary(device_ids=None, start=data_end - span, end=data_end)
            lat.append((time.perf_counter() - t) * 1000)
        out[name] = {
            "median_ms": round(float(np.median(lat[1:])), 1),
            "devices": s.devices_reporting,
            "readings": s.readings,
        }
    return out


def _plot(results_dir: pathlib.Path, queries: dict[str, Any], backend: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, q in queries.items():
        lat = np.sort(np.asarray(q["latencies_ms"]))
        ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=name)
    ax.axvline(50, color="grey", linestyle="--", linewidth=1, label="50 ms target")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of queries")
    label = "PostgreSQL store" if backend == "postgres" else "MongoDB store on the emulator"
    ax.set_title(f"aggregate_window_series latency, {label}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    suffix = "" if backend == "postgres" else f"_{backend}"
    path = results_dir / f"bench_store_query_latency{suffix}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _drop_mongo(url: str) -> None:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(url)
    try:
        client.drop_database(DB_NAME)
    finally:
        client.close()


async def _run_backend(
    backend: str, url: str, results_dir: pathlib.Path, quick: bool
) -> dict[str, Any]:
    """Every part on one backend; PostgreSQL also gets a plain asyncpg connection of the
    benchmark's own (COPY loading, the layout baseline, EXPLAIN), never the store's pool."""
    sizes = SIZES[(backend, quick)]
    keep = os.environ.get("BENCH_STORE_KEEP") == "1"
    store = open_store(url, max_pool=4)
    await store.start()
    conn = await asyncpg.connect(url) if backend == "postgres" else None
    started = time.perf_counter()
    try:
        writes = await _bench_writes(store, conn, sizes)
        big = {"n_devices": sizes.big_devices, "days_1m": sizes.days_1m}
        if conn is not None:
            # the big store starts from an empty windows table
            await conn.execute("TRUNCATE monitoring_windows, monitoring_samples")
            load = await _load_big(store, conn, **big, hours_10s=sizes.hours_10s)
        else:
            await store.delete_windows_before(math.inf)
            load = await _load_big_through_store(store, **big, hours_10s=sizes.hours_10s)
        devices = load.pop("device_ids")
        data_end = load.pop("data_end")
        queries = await _bench_queries(
            store,
            conn,
            devices,
            data_end=data_end,
            days=sizes.days_1m,
            iterations=sizes.iterations,
        )
        fleet = await _bench_fleet(store, data_end=data_end)
    finally:
        if conn is not None:
            await conn.close()
        await store.close()
        if not keep:
            if backend == "postgres":
                drop_database(DB_NAME)
            else:
                _drop_mongo(url)
    plot = _plot(results_dir, queries, backend)
    for q in queries.values():
        q.pop("latencies_ms")
    return {
        "backend": backend,
        "server": "PostgreSQL 15" if backend == "postgres" else EMULATOR,
        "emulator": backend == "mongodb",
        "wall_s": round(time.perf_counter() - started, 1),
        "writes": writes,
        "load": load,
        "queries": queries,
        "fleet_summary": fleet,
        "plot": plot,
        "load_average_end": os.getloadavg()[0],
    }


def _backend_summary(r: dict[str, Any], quick: bool, loop: str) -> list[str]:
    load, writes, queries, fleet = r["load"], r["writes"], r["queries"], r["fleet_summary"]
    main = queries["24h_1m_all_metrics"]
    if r["backend"] == "postgres":
        head = f"**Monitoring store (PostgreSQL 15, asyncpg)** — {'quick' if quick else 'full'} run"
        how = (
            f"binary COPY {load['copy_s']} s ({load['copy_rows_per_s']:,} rows/s) + index "
            f"build {load['index_build_s']} s + VACUUM ANALYZE {load['vacuum_analyze_s']} s + "
            f"hourly rollups {load['hourly_rollups_s']} s"
        )
        size = f", {load['table_and_indexes_gb']} GB with indexes"
        server = (
            f"; of that, PostgreSQL execution p50 {main['server_execution_p50_ms']} ms "
            f"(index-only scan) and client CPU p50 {main['client_cpu_p50_ms']} ms"
        )
    else:
        head = (
            f"**Monitoring store (MongoDB backend, PyMongo async) on {EMULATOR}: emulator "
            f"figures, not MongoDB's** — {'quick' if quick else 'full'} run"
        )
        how = f"upsert_windows {load['upsert_s']} s ({load['upsert_windows_per_s']:,} windows/s)"
        size = ""
        server = f"; client CPU p50 {main['client_cpu_p50_ms']} ms"
    lines = [
        head,
        f"- Store: {load['windows']:,} windows, {load['devices']} devices × {load['metrics']} "
        f"metrics ({load['one_minute_days']} days of 1-min + {load['ten_second_hours']} h of "
        f"10-s windows){size}.",
        f"- Load: {how} = **{load['load_total_s']} s**.",
        f"- Query, one device, 24 h at 1-min buckets, all 5 metrics "
        f"({main['buckets_returned']} buckets): p50 **{main['p50_ms']} ms**, p99 "
        f"**{main['p99_ms']} ms** (target p99 ≤ 50 ms) over {main['n']} queries{server} "
        f"({loop} event loop).",
    ]
    for name, q in queries.items():
        if name != "24h_1m_all_metrics":
            lines.append(
                f"- Query {name} ({q['buckets_returned']} buckets): p50 {q['p50_ms']} ms, "
                f"p99 {q['p99_ms']} ms."
            )
    lines.append(
        f"- fleet_summary, whole fleet ({load['devices']} devices): "
        + ", ".join(f"last {k} {v['median_ms']} ms" for k, v in fleet.items())
        + " (median)."
    )
    lines.append(
        f"- Bulk writes: {writes['windows']['new_windows_per_s']:,} new windows/s, "
        f"{writes['windows']['replayed_windows_per_s']:,} replayed windows/s (batches of "
        f"{writes['windows']['batch']:,}); {writes['samples']['samples_per_s']:,} samples/s "
        f"= {writes['samples']['readings_per_s']:,} readings/s of 5 metrics (batches of "
        f"{writes['samples']['batch_readings']:,} readings)."
    )
    sl = writes.get("samples_layout")
    if sl:
        lines.append(
            f"- Raw-sample layout: wide rows {sl['wide_rows']['samples_per_s']:,} samples/s, "
            f"{sl['wide_rows']['bytes_per_reading']} B/reading vs long rows "
            f"{sl['long_rows']['samples_per_s']:,} samples/s, "
            f"{sl['long_rows']['bytes_per_reading']} B/reading: wide is {sl['wide_speedup']}× "
            f"faster (baseline: long, same run, alternating batch by batch)."
        )
    lines.append(
        f"- 1-min load average {writes['load_average_1m']:.1f} during the writes, "
        f"{r['load_average_end']:.1f} at the end ({os.cpu_count()} cores shared with other work)."
    )
    return lines


def _side_by_side(pg: dict[str, Any], mg: dict[str, Any]) -> list[str]:
    """One table of the figures both backends measured in this run (ratio: PostgreSQL's
    throughput or latency against the emulator's)."""

    def row(label: str, a: float, b: float, unit: str, higher_better: bool) -> str:
        ratio = (a / b if higher_better else b / a) if a and b else float("nan")
        return f"| {label} | {a:,} {unit} | {b:,} {unit} | {ratio:.1f}× |"

    def figure(r: dict[str, Any], *path: str) -> Any:
        for key in path:
            r = r[key]
        return r

    # (label, where the figure is in a backend's results, unit, higher is better)
    rows: list[tuple[str, tuple[str, ...], str, bool]] = [
        ("new windows/s", ("writes", "windows", "new_windows_per_s"), "", True),
        ("replayed windows/s", ("writes", "windows", "replayed_windows_per_s"), "", True),
        ("samples/s", ("writes", "samples", "samples_per_s"), "", True),
    ]
    rows += [(f"{name} p50", ("queries", name, "p50_ms"), "ms", False) for name in pg["queries"]]
    rows += [
        (f"fleet_summary last {name} (median)", ("fleet_summary", name, "median_ms"), "ms", False)
        for name in pg["fleet_summary"]
    ]
    return [
        "| figure (same run) | PostgreSQL | MongoDB backend on the emulator | PostgreSQL "
        "ahead by |",
        "|---|---|---|---|",
        *(row(label, figure(pg, *at), figure(mg, *at), unit, up) for label, at, unit, up in rows),
    ]


def _backends() -> list[str]:
    chosen = [
        b.strip() for b in os.environ.get("BENCH_STORE_BACKENDS", ",".join(BACKENDS)).split(",")
    ]
    unknown = [b for b in chosen if b not in BACKENDS]
    if unknown or not chosen:
        raise SystemExit(f"BENCH_STORE_BACKENDS: choose from {', '.join(BACKENDS)}")
    return chosen


async def _run(results_dir: pathlib.Path, quick: bool, *, loop: str) -> dict[str, Any]:
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    summary: list[str] = []
    for backend in _backends():
        if backend == "postgres":
            create_database(DB_NAME, replace=True)
            results[backend] = await _run_backend(backend, _db_url(), results_dir, quick)
        else:
            with mongodb_server() as server:
                url = f"{server.rstrip('/')}/{DB_NAME}"
                _drop_mongo(url)
                results[backend] = await _run_backend(backend, url, results_dir, quick)
        summary += _backend_summary(results[backend], quick, loop)
    if len(results) == len(BACKENDS):
        summary += [
            "",
            f"Side by side (one run; the emulator's store is smaller: "
            f"{results['mongodb']['load']['windows']:,} windows against "
            f"{results['postgres']['load']['windows']:,}):",
            "",
            *_side_by_side(results["postgres"], results["mongodb"]),
        ]
    return {
        "benchmark": "store",
        "quick": quick,
        "event_loop": loop,
        "wall_s": round(time.perf_counter() - started, 1),
        "backends": results,
        "summary": summary,
    }


async def _run_queries_only(results_dir: pathlib.Path, *, loop: str) -> dict[str, Any]:
    """Re-measure the queries on a store kept by an earlier full run (``BENCH_STORE_KEEP=1``)."""
    url = _db_url()
    store = open_store(url, max_pool=4)
    await store.start()
    conn = await asyncpg.connect(url)
    try:
        days = 8
        devices = _big_devices(np.random.default_rng(11), 100)
        count = await conn.fetchval("SELECT count(*) FROM monitoring_windows")
        load_avg_start = os.getloadavg()[0]
        queries = await _bench_queries(
            store, conn, devices, data_end=T0 + days * 86400, days=days, iterations=300
        )
        load_avg_end = os.getloadavg()[0]
    finally:
        await conn.close()
        await store.close()
    plot = _plot(results_dir, queries, "postgres")
    for q in queries.values():
        q.pop("latencies_ms")
    summary = [f"**Monitoring store queries** on the kept {count:,}-window store ({loop}):"]
    summary += [
        f"- {name} ({q['buckets_returned']} buckets): p50 {q['p50_ms']} ms, p99 {q['p99_ms']} ms"
        f", client CPU p50 {q['client_cpu_p50_ms']} ms"
        for name, q in queries.items()
    ]
    summary.append(
        f"- 1-min load average {load_avg_start:.1f} before, {load_avg_end:.1f} after "
        f"({os.cpu_count()} cores)."
    )
    return {
        "benchmark": "store",
        "queries_only": True,
        "event_loop": loop,
        "windows": count,
        "queries": queries,
        "plot": plot,
        "summary": summary,
    }


def run(results_dir: pathlib.Path, *, quick: bool = False) -> dict[str, Any]:
    """Run the store benchmark (see the module docstring).

    Runs on uvloop when it is installed, as the monitoring API does under uvicorn[standard].
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(_run(results_dir, quick, loop="asyncio"))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(results_dir, quick, loop="uvloop"))


def main() -> None:
    results_dir = pathlib.Path("benchmarks/results")
    if "--queries-only" in sys.argv[1:]:
        results_dir.mkdir(parents=True, exist_ok=True)
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            results = asyncio.run(_run_queries_only(results_dir, loop="asyncio"))
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                results = runner.run(_run_queries_only(results_dir, loop="uvloop"))
    else:
        results = run(results_dir, quick="--quick" in sys.argv[1:])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
