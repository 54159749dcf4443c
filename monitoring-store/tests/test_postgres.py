"""PostgreSQL-specific behaviour: schema creation races, chunked writes, URL forms."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from iot_common.events import WindowStats
from monitoring_store import FleetSummary, SampleBatch, open_store
from monitoring_store.postgres import PostgresStore
from monitoring_store.postgres import rollups as pg_rollups
from monitoring_store.postgres import samples as pg_samples

T0 = 1_789_948_800.0


async def test_concurrent_start_and_sqlalchemy_style_url(
    pg_database_factory: Callable[[str], str],
) -> None:
    url = pg_database_factory("pgstart")
    stores = [
        open_store(url.replace("postgresql://", "postgresql+asyncpg://"), max_pool=2)
        for _ in range(3)
    ]
    await asyncio.gather(*(s.start() for s in stores))  # several services starting at once
    try:
        assert await stores[0].query_alerts() == []
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_big_batches_are_split_between_readings(
    pg_database_factory: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_samples, "WRITE_CHUNK", 7)  # so a reading's 3 rows straddle chunk edges
    store = open_store(pg_database_factory("pgchunk"))
    await store.start()
    try:
        n = 10
        metrics = ["a", "b", "c"]
        batch = SampleBatch(
            device_id=np.array(["d1"] * (3 * n), dtype=object),
            metric=np.array(metrics * n, dtype=object),
            ts=np.repeat(T0 + np.arange(n, dtype=np.float64), 3),
            value=np.arange(3 * n, dtype=np.float64),
            seq=np.repeat(np.arange(n, dtype=np.int64), 3),
        )
        await store.insert_samples(batch)
        got = await store.query_samples("d1", metrics=None, start=T0, end=T0 + n)
        assert [(s.metric, s.value) for s in got] == [
            (m, float(3 * i + j)) for i in range(n) for j, m in enumerate(metrics)
        ]
    finally:
        await store.close()


def test_unknown_scheme_and_bad_schema_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        open_store("redis://localhost:6379/0")
    with pytest.raises(ValueError, match="schema"):
        open_store("postgresql://localhost/iot", schema='x"; DROP TABLE users; --')


async def test_start_upgrades_the_first_layout(pg_database_factory: Callable[[str], str]) -> None:
    """A database created by the first version (long samples, plain key) is converted."""
    import asyncpg

    url = pg_database_factory("pgupgrade")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            CREATE TABLE monitoring_samples (
                device_id text NOT NULL, ts double precision NOT NULL, seq bigint NOT NULL,
                metric text NOT NULL, value double precision NOT NULL,
                CONSTRAINT monitoring_samples_pkey PRIMARY KEY (device_id, ts, seq, metric));
            CREATE INDEX monitoring_samples_ts_brin ON monitoring_samples USING brin (ts);
            INSERT INTO monitoring_samples VALUES
                ('d1', 1.5, 1, 'temp', 20.0), ('d1', 1.5, 1, 'hum', 40.0),
                ('d1', 2.5, -1, 'temp', 21.0);
            CREATE TABLE monitoring_windows (
                device_id text NOT NULL, metric text NOT NULL, window_seconds integer NOT NULL,
                window_start double precision NOT NULL, count bigint NOT NULL,
                min double precision NOT NULL, max double precision NOT NULL,
                mean double precision NOT NULL, stddev double precision NOT NULL,
                p50 double precision NOT NULL, p95 double precision NOT NULL,
                last double precision NOT NULL, last_ts double precision NOT NULL,
                final boolean NOT NULL DEFAULT true, updated_at double precision NOT NULL DEFAULT 0,
                CONSTRAINT monitoring_windows_pkey
                    PRIMARY KEY (device_id, window_seconds, window_start, metric));
            """
        )
        store = open_store(url)
        await store.start()
        try:
            got = await store.query_samples("d1", metrics=None, start=0, end=10)
            assert [(s.metric, s.ts, s.value, s.seq) for s in got] == [
                ("hum", 1.5, 40.0, 1),
                ("temp", 1.5, 20.0, 1),
                ("temp", 2.5, 21.0, None),
            ]
        finally:
            await store.close()
        assert await conn.fetchval(
            "SELECT indnatts > indnkeyatts FROM pg_index "
            "WHERE indexrelid = 'monitoring_windows_pkey'::regclass"
        )
    finally:
        await conn.close()


def _minute_windows(device: str, metric: str, starts: np.ndarray, seed: int) -> list[WindowStats]:
    rng = np.random.default_rng(seed)
    out = []
    for st in starts.tolist():
        n = int(rng.integers(1, 20))
        lo, hi = sorted(rng.normal(20, 5, 2).tolist())
        out.append(
            WindowStats(
                device,
                metric,
                60,
                st,
                n,
                lo,
                hi,
                (lo + hi) / 2,
                1.0,
                lo,
                hi,
                hi,
                st + 59,
                True,
                1.0,
            )
        )
    return out


async def test_hourly_rollups_match_the_windows_under_concurrent_writers_and_after_a_bulk_load(
    pg_database_factory: Callable[[str], str],
) -> None:
    url = pg_database_factory("pgrollup")
    a, b = open_store(url, max_pool=4), open_store(url, max_pool=4)
    await asyncio.gather(a.start(), b.start())
    assert isinstance(a, PostgresStore)
    try:
        starts = T0 + 60.0 * np.arange(26 * 60)  # 26 hours of minutes
        # Two writers (as during a rebalance) write the same devices' windows of the same
        # hours at once, in many small batches.
        batches = [
            _minute_windows(d, m, starts[i::7], seed=i * 10 + k)
            for i in range(7)
            for k, (d, m) in enumerate([("d1", "temp"), ("d1", "hum"), ("d2", "temp")])
        ]
        await asyncio.gather(
            *(s.upsert_windows(batch) for s, batch in zip([a, b] * 11, batches, strict=False))
        )
        start, end = T0 + 900.5, T0 + 25 * 3600 + 30.0

        async def both() -> tuple[tuple[object, ...], tuple[object, ...]]:
            def figures(s: FleetSummary) -> tuple[object, ...]:
                # Sums in another order: the means may differ in the last bits.
                ms = [(m.metric, m.count, m.min, m.max, pytest.approx(m.mean)) for m in s.metrics]
                return (s.devices_reporting, s.readings, ms)

            fast = await a.fleet_summary(device_ids=None, start=start, end=end)
            slow = await a.fleet_summary(device_ids=None, start=start, end=end, use_rollups=False)
            return figures(fast), figures(slow)

        fast, slow = await both()
        assert fast == slow
        assert fast[0] == 2 and isinstance(fast[1], int) and fast[1] > 0
        # A bulk load that bypasses upsert_windows (COPY, as the benchmarks do) leaves the
        # rollups behind until they are rebuilt.
        async with a.pool.acquire() as conn:
            await conn.execute("UPDATE monitoring_windows SET count = count + 1")
        stale, slow = await both()
        assert stale != slow
        await a.rebuild_rollups()
        fast, slow = await both()
        assert fast == slow
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_readings_written_as_wide_rows_are_stored_as_by_the_general_statement(
    pg_database_factory: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write path for whole readings (one wide row each, values sliced from one array)
    stores exactly what the general statement (long rows grouped on the server) stores: two
    device types with their own metrics in their own order, a replayed batch, a batch with
    a reading twice and one with a metric twice (those go the general way)."""
    import asyncpg

    kinds = {"t": ["temp", "hum", "co2"], "p": ["v", "a"]}
    dev: list[str] = []
    met: list[str] = []
    ts: list[float] = []
    seq: list[int] = []
    for i in range(40):
        d = f"{'tp'[i % 2]}{i % 5}"
        for m in kinds[d[0]]:
            dev.append(d)
            met.append(m)
            ts.append(T0 + i * 0.5)
            seq.append(i if i % 7 else -1)
    n = len(ts)
    batch = SampleBatch(
        device_id=np.array(dev, dtype=object),
        metric=np.array(met, dtype=object),
        ts=np.array(ts),
        value=np.arange(n, dtype=np.float64) * 1.5,
        seq=np.array(seq, dtype=np.int64),
    )
    twice = SampleBatch(*(np.concatenate([a[:5], a[:5]]) for a in _columns(batch)))
    odd = SampleBatch(
        device_id=np.array(["x", "x"], dtype=object),
        metric=np.array(["m", "m"], dtype=object),
        ts=np.array([T0, T0]),
        value=np.array([1.0, 2.0]),
        seq=np.array([0, 0]),
    )
    assert pg_samples._wide_groups(batch) is not None
    assert pg_samples._wide_groups(twice) is None
    assert pg_samples._wide_groups(odd) is None

    async def stored(url: str) -> list[tuple[object, ...]]:
        store = open_store(url)
        await store.start()
        try:
            for b in (batch, batch, twice, odd):
                await store.insert_samples(b)
        finally:
            await store.close()
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT * FROM monitoring_samples ORDER BY device_id, ts, seq")
        finally:
            await conn.close()
        return [tuple(r) for r in rows]

    wide = await stored(pg_database_factory("pgwide"))
    monkeypatch.setattr(pg_samples, "_wide_groups", lambda _batch: None)
    general = await stored(pg_database_factory("pggeneral"))
    assert len(wide) == 41
    odd_rows = [r for r in wide if r[0] == "x"]
    assert len(odd_rows) == 1 and odd_rows[0][3] == ["m"]  # the metric once
    assert wide == [r if r[0] != "x" else odd_rows[0] for r in general]


def _columns(b: SampleBatch) -> tuple[np.ndarray, ...]:
    return (b.device_id, b.metric, b.ts, b.value, b.seq)


async def test_the_rollups_of_a_window_write_read_only_its_device_hours_windows(
    pg_database_factory: Callable[[str], str],
) -> None:
    """Refreshing the hourly rollups after a window write reads each written device-hour's
    windows by a primary-key range, on a new store whose table has never been analysed too:
    planned freely there, it scanned every device's windows of the hour once per device-hour
    (5 s for the 2,000 devices of one write at 60,000 windows) or sorted the whole table."""
    store = open_store(pg_database_factory("pgrollplan"))
    await store.start()
    assert isinstance(store, PostgresStore)
    try:
        devices = [f"d{i:04d}" for i in range(2000)]
        await store.upsert_windows(
            [_window(d, m, 10, T0 + 10 * k) for d in devices for m in ("a", "b") for k in range(6)]
        )
        await store.upsert_windows([_window(d, "a", 60, T0) for d in devices])
        hours = ([d for d in devices], [60] * len(devices), [T0 - T0 % 3600] * len(devices))
        async with store.pool.acquire() as conn, conn.transaction():
            for query in pg_rollups._ROLLUP_REFRESH[:-1]:
                await conn.execute(query, *hours)
            (plan,) = json.loads(
                await conn.fetchval(
                    "EXPLAIN (FORMAT JSON) " + pg_rollups._ROLLUP_REFRESH[-1], *hours
                )
            )
        scans = list(_scans_of(plan["Plan"], "monitoring_windows"))
        assert scans, plan
        for node in scans:
            assert node["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"), node
            index = node.get("Index Name") or node["Plans"][0]["Index Name"]
            cond = node.get("Index Cond") or node["Plans"][0]["Index Cond"]
            assert index == "monitoring_windows_pkey" and "device_id" in cond, node
    finally:
        await store.close()


def _window(device: str, metric: str, size: int, start: float) -> WindowStats:
    return WindowStats(device, metric, size, start, 1, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, start)


def _scans_of(node: dict[str, Any], table: str) -> Iterator[dict[str, Any]]:
    if node.get("Relation Name") == table:
        yield node
    for child in node.get("Plans", []):
        yield from _scans_of(child, table)
