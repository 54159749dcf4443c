"""Monitoring store (PostgreSQL) benchmark: bulk write throughput and rolling-stats query latency.

1. Bulk writes through the store API into a fresh database: ``upsert_windows`` (new windows,
   then the same batches replayed, i.e. all conflicts) and ``insert_samples`` (readings of 5
   metrics in batches of 10,000 readings). The raw-sample layout is measured too: the store's
   wide rows (one per reading) against the long layout (one row per metric value) fed the same
   batches the same way (``samples_layout``), which is how the layout was chosen.
2. A store holding ≥ 10,000,000 windows across 100 devices (5 metrics; 1-minute windows for 8
   days and 10-second windows for the last day), loaded with binary ``COPY`` built by numpy, in
   time order (as windows are produced: every device's windows of one period together), then
   the indexes built (the same covering key the store creates), ``VACUUM ANALYZE`` and the
   hourly rollups rebuilt (COPY bypasses ``upsert_windows``, which keeps them current).
   Reported: how long loading took.
3. Query latency through ``aggregate_window_series`` (what ``GET /monitoring/data/{id}`` calls), one
   query at a time, random device and random 24-hour range: 24 h at 1-minute buckets (all five
   metrics — the issue's figure, target p99 ≤ 50 ms — and one metric), 24 h at 1-hour buckets
   re-aggregated from 1-minute windows, 1 h at 10-second buckets. Also ``fleet_summary`` over
   the whole fleet for the last 5 minutes, hour and day.

Run: ``uv run python -m benchmarks.bench_store`` (``--quick`` for a small store). The database
(``iot_bench_store``) is dropped at the end unless ``BENCH_STORE_KEEP=1``; then
``--queries-only`` re-measures the queries on it without reloading (drop it afterwards with
``psql -c 'DROP DATABASE iot_bench_store'``).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from iot_common.events import WindowStats
from monitoring_store import SampleBatch, open_store
from monitoring_store.postgres import PostgresStore, rebuild_rollups

ADMIN_URL = os.environ.get("IOT_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "iot_bench_store"
METRICS = ("temperature", "humidity", "pressure", "battery", "rssi")
T0 = 1_789_948_800.0  # UTC midnight

F64 = npt.NDArray[np.float64]


def _psql(sql: str) -> None:
    subprocess.run(["psql", ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True)


def _db_url() -> str:
    return f"{ADMIN_URL.rsplit('/', 1)[0]}/{DB_NAME}"


def _pcts(lat_ms: list[float]) -> dict[str, float]:
    a = np.asarray(lat_ms)
    return {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "max_ms": round(float(a.max()), 2),
    }


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
    store: PostgresStore, conn: asyncpg.Connection, quick: bool
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    # windows: 1000 devices × 5 metrics per period, one upsert per period (as the agents flush)
    periods = 10 if quick else 60
    wins = _windows(1000, periods, 10, T0, seed=1)
    per_batch = 1000 * len(METRICS)
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

    n_readings = 100_000 if quick else 500_000
    sbatches = _sample_batches(n_readings, 10_000, 1000)
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
    k = len(METRICS)
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
    conn: asyncpg.Connection, *, n_devices: int, days_1m: int, hours_10s: int
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
    await rebuild_rollups(conn)  # COPY bypasses upsert_windows, which keeps them current
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


# -- 3. query latency --------------------------------------------------------------------------
async def _bench_queries(
    store: PostgresStore, devices: list[str], *, data_end: float, days: int, iterations: int
) -> dict[str, Any]:
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
        for i in range(iterations + 10):
            d, start, end = pick()
            t = time.perf_counter()
            c = time.process_time()
            series = await store.aggregate_window_series(d, start=start, end=end, **kw)
            ms = (time.perf_counter() - t) * 1000
            if i >= 10:  # the first few warm the connection and the plan cache
                lat.append(ms)
                cpu.append((time.process_time() - c) * 1000)
                rows = sum(len(x) for x in series)
        out[name] = {
            **_pcts(lat),
            "client_cpu_p50_ms": round(float(np.median(cpu)), 2),
            "buckets_returned": rows,
            "latencies_ms": lat,
        }
    # Server-side execution time of the main query (the store's SQL for bucket == window).
    server: list[float] = []
    async with store.pool.acquire() as conn:
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


async def _bench_fleet(store: PostgresStore, *, data_end: float) -> dict[str, Any]:
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


def _plot(results_dir: pathlib.Path, queries: dict[str, Any]) -> str | None:
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
    ax.set_title("aggregate_window_series latency, PostgreSQL store, 10M windows")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = results_dir / "bench_store_query_latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


async def _run(results_dir: pathlib.Path, quick: bool, *, loop: str) -> dict[str, Any]:
    keep = os.environ.get("BENCH_STORE_KEEP") == "1"
    _psql(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    _psql(f'CREATE DATABASE "{DB_NAME}"')
    url = _db_url()
    store = open_store(url, max_pool=4)
    assert isinstance(store, PostgresStore)
    await store.start()
    conn = await asyncpg.connect(url)
    started = time.perf_counter()
    try:
        writes = await _bench_writes(store, conn, quick)
        # the big store starts from an empty windows table
        await conn.execute("TRUNCATE monitoring_windows, monitoring_samples")
        days = 2 if quick else 8
        load = await _load_big(conn, n_devices=100, days_1m=days, hours_10s=1 if quick else 24)
        devices = load.pop("device_ids")
        data_end = load.pop("data_end")
        queries = await _bench_queries(
            store, devices, data_end=data_end, days=days, iterations=50 if quick else 300
        )
        fleet = await _bench_fleet(store, data_end=data_end)
    finally:
        await conn.close()
        await store.close()
        if not keep:
            _psql(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    load_avg_end = os.getloadavg()[0]
    plot = _plot(results_dir, queries)
    for q in queries.values():
        q.pop("latencies_ms")
    main = queries["24h_1m_all_metrics"]
    sl = writes["samples_layout"]
    summary = [
        f"**Monitoring store (PostgreSQL 15, asyncpg)** — {'quick' if quick else 'full'} run",
        f"- Store: {load['windows']:,} windows, {load['devices']} devices × {load['metrics']} "
        f"metrics ({load['one_minute_days']} days of 1-min + {load['ten_second_hours']} h of "
        f"10-s windows), {load['table_and_indexes_gb']} GB with indexes.",
        f"- Load: binary COPY {load['copy_s']} s ({load['copy_rows_per_s']:,} rows/s) + index "
        f"build {load['index_build_s']} s + VACUUM ANALYZE {load['vacuum_analyze_s']} s + "
        f"hourly rollups {load['hourly_rollups_s']} s = "
        f"**{load['load_total_s']} s**.",
        f"- Query, one device, 24 h at 1-min buckets, all 5 metrics "
        f"({main['buckets_returned']} buckets): p50 **{main['p50_ms']} ms**, p99 "
        f"**{main['p99_ms']} ms** (target p99 ≤ 50 ms) over {main['n']} queries; of that, "
        f"PostgreSQL execution p50 {main['server_execution_p50_ms']} ms (index-only scan) and "
        f"client CPU p50 {main['client_cpu_p50_ms']} ms (binary column arrays into numpy); "
        f"the rest is waiting for a CPU on the shared machine ({loop} event loop).",
    ]
    for name, q in queries.items():
        if name != "24h_1m_all_metrics":
            summary.append(
                f"- Query {name} ({q['buckets_returned']} buckets): p50 {q['p50_ms']} ms, "
                f"p99 {q['p99_ms']} ms."
            )
    summary.append(
        "- fleet_summary, whole fleet (100 devices): "
        + ", ".join(f"last {k} {v['median_ms']} ms" for k, v in fleet.items())
        + " (median)."
    )
    summary += [
        f"- Bulk writes: {writes['windows']['new_windows_per_s']:,} new windows/s, "
        f"{writes['windows']['replayed_windows_per_s']:,} replayed windows/s (batches of "
        f"{writes['windows']['batch']:,}); {writes['samples']['samples_per_s']:,} samples/s "
        f"= {writes['samples']['readings_per_s']:,} readings/s of 5 metrics (batches of 10,000 "
        f"readings).",
        f"- Raw-sample layout: wide rows {sl['wide_rows']['samples_per_s']:,} samples/s, "
        f"{sl['wide_rows']['bytes_per_reading']} B/reading vs long rows "
        f"{sl['long_rows']['samples_per_s']:,} samples/s, {sl['long_rows']['bytes_per_reading']} "
        f"B/reading: wide is {sl['wide_speedup']}× faster (baseline: long, same run, "
        f"alternating batch by batch).",
        f"- Machine: {os.cpu_count()} cores shared with other work; 1-min load average "
        f"{writes['load_average_1m']:.1f} during the writes, {load_avg_end:.1f} after the queries.",
    ]
    return {
        "benchmark": "store",
        "quick": quick,
        "event_loop": loop,
        "wall_s": round(time.perf_counter() - started, 1),
        "writes": writes,
        "load": load,
        "queries": queries,
        "fleet_summary": fleet,
        "plot": plot,
        "summary": summary,
    }


async def _run_queries_only(results_dir: pathlib.Path, *, loop: str) -> dict[str, Any]:
    """Re-measure the queries on a store kept by an earlier full run (``BENCH_STORE_KEEP=1``)."""
    url = _db_url()
    store = open_store(url, max_pool=4)
    assert isinstance(store, PostgresStore)
    await store.start()
    try:
        days = 8
        devices = _big_devices(np.random.default_rng(11), 100)
        async with store.pool.acquire() as conn:
            count = await conn.fetchval("SELECT count(*) FROM monitoring_windows")
        load_avg_start = os.getloadavg()[0]
        queries = await _bench_queries(
            store, devices, data_end=T0 + days * 86400, days=days, iterations=300
        )
        load_avg_end = os.getloadavg()[0]
    finally:
        await store.close()
    plot = _plot(results_dir, queries)
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
