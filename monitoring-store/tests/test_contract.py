"""The monitoring store contract, run against every reachable backend.

PostgreSQL (a throw-away schema per test) and MongoDB (a throw-away database per test on the
session's server: ``MONGODB_URL`` or the private one the root conftest starts). Expected values
come from numpy over the same readings the test writes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from iot_common.events import Alert, WindowStats
from iot_common.telemetry import DeadLetter
from monitoring_store import (
    DEADLETTER_PAYLOAD_BYTES,
    AlertTransitionError,
    DeadLetterRecord,
    Delivery,
    DeviceRules,
    MonitoringStore,
    SampleBatch,
    Subscription,
    open_store,
)
from monitoring_store.base import deadletter_record

T0 = 1_789_948_800.0  # an epoch-aligned instant (divisible by 86400 / 3600 / 60 / 10)
assert T0 % 86400 == 0

BACKENDS = ["postgres", "mongo"]


@pytest.fixture(scope="module")
def pg_store_url(pg_database_factory: Callable[[str], str]) -> str:
    """One database for the module; every test gets its own schema in it (cheap to drop)."""
    return pg_database_factory("store")


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, pg_store_url: str
) -> AsyncIterator[MonitoringStore]:
    if request.param == "postgres":
        schema = f"t_{secrets.token_hex(6)}"
        s = open_store(pg_store_url, max_pool=4, schema=schema)
        await s.start()
        try:
            yield s
        finally:
            pool = s.pool
            await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await s.close()
        return
    base = request.getfixturevalue("mongodb_url")
    from monitoring_store.mongo import MongoStore

    db = f"iot_store_test_{secrets.token_hex(4)}"
    ms = MongoStore(base, database=db)
    await ms.start()
    try:
        yield ms
    finally:
        await ms.drop_database()
        await ms.close()


# -- helpers ---------------------------------------------------------------------------------
def readings(
    rng: np.random.Generator, *, n: int, span: float, start: float = T0
) -> tuple[np.ndarray, np.ndarray]:
    """n readings at random (sorted, distinct) times within [start, start + span)."""
    ts = np.sort(start + rng.choice(int(span * 10), size=n, replace=False) / 10.0)
    values = rng.normal(50.0, 10.0, size=n)
    return ts, values


def windows_of(
    device: str, metric: str, ts: np.ndarray, values: np.ndarray, size: int, *, updated: float = 1.0
) -> list[WindowStats]:
    """Tumbling windows computed with numpy, the way the agents define them."""
    out: list[WindowStats] = []
    starts = np.floor(ts / size) * size
    for ws in np.unique(starts):
        mask = starts == ws
        v, t = values[mask], ts[mask]
        out.append(
            WindowStats(
                device_id=device,
                metric=metric,
                window_seconds=size,
                window_start=float(ws),
                count=len(v),
                min=float(v.min()),
                max=float(v.max()),
                mean=float(v.mean()),
                stddev=float(v.std()),
                p50=float(np.percentile(v, 50)),
                p95=float(np.percentile(v, 95)),
                last=float(v[np.argmax(t)]),
                last_ts=float(t.max()),
                final=True,
                updated_at=updated,
            )
        )
    return out


def sample_batch(rows: list[tuple[str, str, float, float, int]]) -> SampleBatch:
    return SampleBatch(
        device_id=np.array([r[0] for r in rows], dtype=object),
        metric=np.array([r[1] for r in rows], dtype=object),
        ts=np.array([r[2] for r in rows], dtype=np.float64),
        value=np.array([r[3] for r in rows], dtype=np.float64),
        seq=np.array([r[4] for r in rows], dtype=np.int64),
    )


def alert(n: int, **kw: Any) -> Alert:
    base: dict[str, Any] = {
        "alert_id": f"a{n}",
        "device_id": "d1",
        "rule_id": "hot",
        "rule_type": "threshold",
        "severity": "warning",
        "status": "active",
        "message": "temp above 30",
        "started_at": T0 + n,
        "updated_at": T0 + n,
        "metric": "temp",
        "value": 31.0,
        "threshold": 30.0,
        "owner_id": "u1",
    }
    base.update(kw)
    return Alert(**base)


def key(w: WindowStats) -> tuple[str, str, int, float]:
    return (w.device_id, w.metric, w.window_seconds, w.window_start)


# -- windows ---------------------------------------------------------------------------------
async def test_windows_upsert_is_idempotent_and_range_queries(store: MonitoringStore) -> None:
    rng = np.random.default_rng(1)
    batch: list[WindowStats] = []
    for metric in ("temp", "hum"):
        ts, v = readings(rng, n=300, span=600)
        batch += windows_of("d1", metric, ts, v, 10)
        batch += windows_of("d1", metric, ts, v, 60)
    ts, v = readings(rng, n=50, span=600)
    batch += windows_of("d2", "temp", ts, v, 10)

    await store.upsert_windows(batch)
    first = await store.query_windows("d1", metrics=None, window_seconds=10, start=T0, end=T0 + 600)
    await store.upsert_windows(batch)  # a replay after a crash
    await store.upsert_windows(list(reversed(batch)))
    again = await store.query_windows("d1", metrics=None, window_seconds=10, start=T0, end=T0 + 600)
    assert again == first
    expected = sorted(
        (w for w in batch if w.device_id == "d1" and w.window_seconds == 10),
        key=lambda w: (w.metric, w.window_start),
    )
    assert first == expected

    # [start, end) on window_start, one metric, one size
    part = await store.query_windows(
        "d1", metrics=["temp"], window_seconds=60, start=T0 + 120, end=T0 + 300
    )
    assert [w.window_start for w in part] == [T0 + 120, T0 + 180, T0 + 240]
    assert {w.metric for w in part} == {"temp"}
    assert (
        await store.query_windows("nobody", metrics=None, window_seconds=10, start=T0, end=T0 + 600)
        == []
    )


async def test_window_corrections_newer_wins(store: MonitoringStore) -> None:
    w = windows_of("d1", "temp", np.array([T0 + 1.0, T0 + 2.0]), np.array([1.0, 3.0]), 10)[0]
    await store.upsert_windows([w])
    corrected = WindowStats(**{**_asdict(w), "count": 3, "max": 9.0, "updated_at": 5.0})
    stale = WindowStats(**{**_asdict(w), "count": 1, "updated_at": 0.5})
    await store.upsert_windows([corrected])
    await store.upsert_windows([stale])  # an older state arriving late changes nothing
    # a batch holding two states of one window: the newest wins
    await store.upsert_windows([corrected, stale])
    got = await store.query_windows("d1", metrics=None, window_seconds=10, start=T0, end=T0 + 10)
    assert got == [corrected]


def _asdict(w: WindowStats) -> dict[str, Any]:
    return {f: getattr(w, f) for f in w.__struct_fields__}


# -- raw samples -----------------------------------------------------------------------------
async def test_samples_stored_once_and_queried_by_range(store: MonitoringStore) -> None:
    rows = [
        ("d1", "temp", T0 + 1, 20.0, 1),
        ("d1", "hum", T0 + 1, 40.0, 1),
        ("d1", "temp", T0 + 2, 21.0, 2),
        ("d1", "temp", T0 + 3, 22.0, -1),  # no seq from the device
        ("d1", "temp", T0 + 3, 23.0, 7),  # same time, different seq: a different reading
        ("d2", "temp", T0 + 2, 99.0, 1),
    ]
    await store.insert_samples(sample_batch(rows))
    await store.insert_samples(sample_batch(rows))  # replay
    await store.insert_samples(sample_batch(rows[:3] + rows[:3]))  # duplicates inside a batch

    got = await store.query_samples("d1", metrics=None, start=T0, end=T0 + 10)
    assert [(s.metric, s.ts, s.value, s.seq) for s in got] == [
        ("hum", T0 + 1, 40.0, 1),
        ("temp", T0 + 1, 20.0, 1),
        ("temp", T0 + 2, 21.0, 2),
        ("temp", T0 + 3, 22.0, None),
        ("temp", T0 + 3, 23.0, 7),
    ]
    temp = await store.query_samples("d1", metrics=["temp"], start=T0 + 2, end=T0 + 3)
    assert [(s.ts, s.value) for s in temp] == [(T0 + 2, 21.0)]
    limited = await store.query_samples("d1", metrics=None, start=T0, end=T0 + 10, limit=2)
    assert len(limited) == 2
    assert await store.insert_samples(sample_batch([])) is None


async def test_recent_samples_filters_and_pages(store: MonitoringStore) -> None:
    rows = [(f"d{d}", m, T0 + i, float(i), i) for i in range(10) for d in (1, 2, 3) for m in "ab"]
    await store.insert_samples(sample_batch(rows))

    newest = await store.recent_samples(device_ids=["d1", "d2"], limit=4)
    assert [(s.device_id, s.ts) for s in newest] == [
        ("d1", T0 + 9),
        ("d1", T0 + 9),
        ("d2", T0 + 9),
        ("d2", T0 + 9),
    ]
    assert {s.device_id for s in await store.recent_samples(device_ids=None, limit=100)} == {
        "d1",
        "d2",
        "d3",
    }
    page1 = await store.recent_samples(device_ids=["d3"], metric="a", limit=3)
    page2 = await store.recent_samples(device_ids=["d3"], metric="a", limit=3, offset=3)
    assert [s.ts for s in page1 + page2] == [T0 + i for i in range(9, 3, -1)]
    since = await store.recent_samples(device_ids=None, metric="b", since=T0 + 8, limit=100)
    assert len(since) == 6 and all(s.ts >= T0 + 8 and s.metric == "b" for s in since)
    assert await store.recent_samples(device_ids=[], limit=10) == []


async def test_delete_samples_before(store: MonitoringStore) -> None:
    rows = [("d1", "temp", T0 + i, float(i), i) for i in range(10)]
    await store.insert_samples(sample_batch(rows))
    assert await store.delete_samples_before(T0 + 4) == 4
    left = await store.query_samples("d1", metrics=None, start=0, end=T0 + 100)
    assert [s.ts for s in left] == [T0 + i for i in range(4, 10)]


# -- latest values (the fleet table) ---------------------------------------------------------
def reading(
    device: str,
    metric: str,
    size: int,
    start: float,
    last: float,
    last_ts: float,
    *,
    count: int = 1,
    updated: float = 1.0,
) -> WindowStats:
    """A window whose newest reading was ``last`` at ``last_ts``."""
    return WindowStats(
        device_id=device,
        metric=metric,
        window_seconds=size,
        window_start=start,
        count=count,
        min=last,
        max=last,
        mean=last,
        stddev=0.0,
        p50=last,
        p95=last,
        last=last,
        last_ts=last_ts,
        updated_at=updated,
    )


async def test_latest_values_follow_the_newest_reading_the_windows_saw(
    store: MonitoringStore,
) -> None:
    await store.upsert_windows(
        [
            reading("d1", "temp", 10, T0, 21.0, T0 + 1),
            reading("d1", "temp", 10, T0 + 10, 25.0, T0 + 15),
            reading("d1", "temp", 60, T0, 25.0, T0 + 15),  # a coarser window, same reading
            reading("d1", "hum", 10, T0, 40.0, T0 + 3),
            reading("d2", "temp", 10, T0, 13.0, T0 + 2),
            reading("d3", "temp", 10, T0, 0.0, 0.0, count=0),  # an empty window: no reading
        ]
    )
    # An older window written afterwards (a late reading's correction, a replay) changes
    # nothing.
    await store.upsert_windows([reading("d1", "temp", 10, T0, 99.0, T0 + 4, updated=2.0)])
    got = await store.latest_values(device_ids=["d2", "d1", "d9", "d3"])
    assert [(s.device_id, s.metric, s.ts, s.value, s.seq) for s in got] == [
        ("d1", "hum", T0 + 3, 40.0, None),
        ("d1", "temp", T0 + 15, 25.0, None),
        ("d2", "temp", T0 + 2, 13.0, None),
    ]
    await store.upsert_windows([reading("d1", "temp", 10, T0 + 20, -3.5, T0 + 29)])
    got = await store.latest_values(device_ids=["d1"])
    assert [(s.metric, s.value) for s in got] == [("hum", 40.0), ("temp", -3.5)]
    assert await store.latest_values(device_ids=[]) == []
    # Retention of one window size keeps them (other sizes still hold those readings) ...
    await store.delete_windows_before(T0 + 30, window_seconds=10)
    assert len(await store.latest_values(device_ids=["d1", "d2"])) == 3
    # ... retention of every size drops the values older than its cut-off.
    await store.delete_windows_before(T0 + 5)
    got = await store.latest_values(device_ids=["d1", "d2"])
    assert [(s.device_id, s.metric) for s in got] == [("d1", "temp")]


async def test_latest_values_are_kept_with_raw_samples_off(store: MonitoringStore) -> None:
    """Only windows are written when the agents keep no raw samples; the fleet table's last
    values come from them, so they are there all the same."""
    await store.upsert_windows([reading("d1", "temp", 10, T0, 21.5, T0 + 7)])
    assert await store.query_samples("d1", metrics=None, start=0, end=T0 + 100) == []
    (got,) = await store.latest_values(device_ids=["d1"])
    assert (got.metric, got.ts, got.value) == ("temp", T0 + 7, 21.5)
    assert await store.rank_by_latest(metric="temp", device_ids=["d0", "d1"]) == ["d1", "d0"]


async def test_devices_ranked_by_a_metrics_latest_value_page_by_page(
    store: MonitoringStore,
) -> None:
    rng = np.random.default_rng(14)
    devices = [f"dev-{i:03d}" for i in range(120)]
    values = {d: float(v) for d, v in zip(devices[:90], rng.normal(20, 5, 90), strict=True)}
    values["dev-007"] = values["dev-008"] = 20.0  # a tie: kept in the order given
    rows = [reading(d, "temp", 10, T0, 0.0, T0 + 1) for d in values]  # older, then the newest
    rows += [reading(d, "temp", 10, T0 + 10, v, T0 + 12) for d, v in values.items()]
    rows += [reading(d, "hum", 10, T0, 1.0, T0 + 2) for d in devices[90:]]  # no temp
    await store.upsert_windows(rows)
    given = list(reversed(devices))  # e.g. name order: the tie-break
    position = {d: n for n, d in enumerate(given)}
    without = [d for d in given if d not in values]

    for descending in (False, True):
        sign = -1 if descending else 1
        expected = sorted(values, key=lambda d: (sign * values[d], position[d])) + without
        pages = [
            await store.rank_by_latest(
                metric="temp", device_ids=given, descending=descending, limit=25, offset=o
            )
            for o in range(0, 125, 25)
        ]
        assert [len(p) for p in pages] == [25, 25, 25, 25, 20]
        # every device once, in order, across the pages
        assert [d for page in pages for d in page] == expected
    top = await store.rank_by_latest(metric="temp", device_ids=given, descending=True, limit=3)
    assert top == sorted(values, key=lambda d: -values[d])[:3]
    # Only the devices named; a device named twice counts once; nobody has "co2".
    assert await store.rank_by_latest(
        metric="temp", device_ids=["dev-100", "dev-001", "dev-001", "dev-002"], limit=10
    ) == [*sorted(["dev-001", "dev-002"], key=values.__getitem__), "dev-100"]
    assert await store.rank_by_latest(metric="co2", device_ids=given[:4], limit=10) == given[:4]
    assert await store.rank_by_latest(metric="temp", device_ids=[], limit=10) == []


# -- re-aggregation --------------------------------------------------------------------------
@pytest.mark.parametrize(("bucket", "source"), [(60, 10), (300, 10), (3600, 60), (10, 10)])
async def test_aggregate_windows_matches_numpy(
    store: MonitoringStore, bucket: int, source: int
) -> None:
    rng = np.random.default_rng(bucket + source)
    span = 2 * 3600
    data = {m: readings(rng, n=3000, span=span) for m in ("temp", "hum")}
    stored: list[WindowStats] = []
    for m, (ts, v) in data.items():
        stored += windows_of("d1", m, ts, v, source)
    ts2, v2 = readings(rng, n=100, span=span)
    stored += windows_of("d2", "temp", ts2, v2, source)  # another device: must not leak in
    await store.upsert_windows(stored)

    start, end = T0 + 600, T0 + span - 600
    got = await store.aggregate_windows(
        "d1",
        metrics=None,
        start=start,
        end=end,
        bucket_seconds=bucket,
        source_window_seconds=source,
    )
    expected_keys = []
    for m in sorted(data):
        ts, v = data[m]
        keep = (np.floor(ts / source) * source >= start) & (np.floor(ts / source) * source < end)
        ts, v = ts[keep], v[keep]
        b = np.floor(ts / bucket) * bucket
        srcw = [w for w in stored if w.device_id == "d1" and w.metric == m]
        for bs in np.unique(b):
            mask = b == bs
            expected_keys.append((m, float(bs)))
            g = next(x for x in got if x.metric == m and x.bucket_start == bs)
            vv, tt = v[mask], ts[mask]
            assert g.device_id == "d1" and g.bucket_seconds == bucket
            assert g.count == len(vv)
            assert g.min == vv.min() and g.max == vv.max()
            assert g.mean == pytest.approx(vv.mean(), rel=1e-9)
            assert g.stddev == pytest.approx(vv.std(), rel=1e-7)
            assert g.last == vv[np.argmax(tt)]
            ws = [
                w
                for w in srcw
                if bs <= w.window_start < bs + bucket and start <= w.window_start < end
            ]
            counts = np.array([w.count for w in ws], dtype=float)
            if len(ws) == 1:
                assert g.exact_percentiles
                assert g.p50 == pytest.approx(np.percentile(vv, 50))
                assert g.p95 == pytest.approx(np.percentile(vv, 95))
            else:
                assert not g.exact_percentiles
                p50 = np.average([w.p50 for w in ws], weights=counts)
                p95 = np.average([w.p95 for w in ws], weights=counts)
                assert g.p50 == pytest.approx(p50, rel=1e-9)
                assert g.p95 == pytest.approx(p95, rel=1e-9)
    assert [(g.metric, g.bucket_start) for g in got] == expected_keys

    only = await store.aggregate_windows(
        "d1",
        metrics=["hum"],
        start=start,
        end=end,
        bucket_seconds=bucket,
        source_window_seconds=source,
    )
    assert {g.metric for g in only} == {"hum"}


@pytest.mark.parametrize(("bucket", "source"), [(60, 60), (300, 60)])
async def test_window_series_carry_the_bucket_rows(
    store: MonitoringStore, bucket: int, source: int
) -> None:
    rng = np.random.default_rng(3)
    stored: list[WindowStats] = []
    for m in ("temp", "hum", "co2"):
        ts, v = readings(rng, n=2000, span=3600)
        stored += windows_of("d1", m, ts, v, source)
    await store.upsert_windows(stored)
    kw: dict[str, Any] = {"bucket_seconds": bucket, "source_window_seconds": source}
    rows = await store.aggregate_windows("d1", metrics=None, start=T0, end=T0 + 3600, **kw)
    series = await store.aggregate_window_series("d1", metrics=None, start=T0, end=T0 + 3600, **kw)
    assert [s.metric for s in series] == ["co2", "hum", "temp"]
    assert sum(len(s) for s in series) == len(rows) > 0
    flat = [
        (s.metric, t, n, lo, hi, mean, sd, p50, p95, last, x)
        for s in series
        for t, n, lo, hi, mean, sd, p50, p95, last, x in zip(
            s.bucket_start.tolist(),
            s.count.tolist(),
            s.min.tolist(),
            s.max.tolist(),
            s.mean.tolist(),
            s.stddev.tolist(),
            s.p50.tolist(),
            s.p95.tolist(),
            s.last.tolist(),
            s.exact_percentiles.tolist(),
            strict=True,
        )
    ]
    assert flat == [
        (
            b.metric,
            b.bucket_start,
            b.count,
            b.min,
            b.max,
            b.mean,
            b.stddev,
            b.p50,
            b.p95,
            b.last,
            b.exact_percentiles,
        )
        for b in rows
    ]
    assert all(s.count.dtype == np.int64 and s.bucket_seconds == bucket for s in series)
    one = await store.aggregate_window_series("d1", metrics=["hum"], start=T0, end=T0 + 3600, **kw)
    assert [s.metric for s in one] == ["hum"]
    assert one[0].mean.tolist() == series[1].mean.tolist()
    none = await store.aggregate_window_series(
        "d1", metrics=None, start=T0 - 7200, end=T0 - 3600, **kw
    )
    assert none == []


async def test_aggregate_windows_rejects_bucket_finer_than_source(store: MonitoringStore) -> None:
    with pytest.raises(ValueError, match="multiple"):
        await store.aggregate_windows(
            "d1", metrics=None, start=T0, end=T0 + 60, bucket_seconds=15, source_window_seconds=10
        )


# -- fleet summary ---------------------------------------------------------------------------
async def test_fleet_summary(store: MonitoringStore) -> None:
    rng = np.random.default_rng(7)
    span = 600
    per_device: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    stored: list[WindowStats] = []
    for d in ("d1", "d2", "d3"):
        ts, _ = readings(rng, n=200, span=span)
        per_device[d] = {}
        for m in ("temp", "hum"):  # every reading carries both metrics
            v = rng.normal(20.0, 5.0, size=len(ts))
            per_device[d][m] = (ts, v)
            stored += windows_of(d, m, ts, v, 10)
            stored += windows_of(d, m, ts, v, 60)
    late_ts = np.array([T0 + span + 5.0])  # outside the range asked for
    stored += windows_of("d4", "temp", late_ts, np.array([1.0]), 10)
    await store.upsert_windows(stored)
    await store.upsert_alerts(
        [
            alert(1, severity="critical", device_id="d1"),
            alert(2, severity="warning", device_id="d2"),
            alert(3, severity="warning", device_id="d3"),
            alert(4, severity="info", device_id="d1", started_at=T0 - 100),  # before the range
        ]
    )

    s = await store.fleet_summary(device_ids=None, start=T0, end=T0 + span)
    assert s.devices_reporting == 3
    assert s.readings == 600
    assert s.readings_per_second == pytest.approx(600 / span)
    assert s.alerts_by_severity == {"critical": 1, "warning": 2}
    for ms in s.metrics:
        v = np.concatenate([per_device[d][ms.metric][1] for d in per_device])
        assert ms.count == len(v)
        assert ms.min == v.min() and ms.max == v.max()
        assert ms.mean == pytest.approx(v.mean(), rel=1e-9)
    assert [ms.metric for ms in s.metrics] == ["hum", "temp"]

    mine = await store.fleet_summary(device_ids=["d1", "d4"], start=T0, end=T0 + span)
    assert mine.devices_reporting == 1 and mine.readings == 200
    assert mine.alerts_by_severity == {"critical": 1}
    empty = await store.fleet_summary(device_ids=None, start=T0 + 10 * span, end=T0 + 11 * span)
    assert empty.devices_reporting == 0 and empty.readings == 0 and empty.metrics == []
    # What a bulk loader calls after writing windows around upsert_windows: same answers.
    await store.rebuild_rollups()
    assert await store.fleet_summary(device_ids=None, start=T0, end=T0 + span) == s


async def test_fleet_summary_reads_the_finest_size_that_has_windows_in_the_range(
    store: MonitoringStore,
) -> None:
    """A size with no window in the range (no longer computed, or computed only for other
    devices' older data) must not hide the size that has them: the summary chose the finest
    size stored anywhere, and reported no device."""
    rng = np.random.default_rng(3)
    ts, _ = readings(rng, n=120, span=600)
    v = rng.normal(20.0, 5.0, size=len(ts))
    stored = windows_of("d1", "temp", ts, v, 60)
    # 10 s windows exist, but a day earlier only.
    stored += windows_of("d2", "temp", ts - 86_400, v, 10)
    await store.upsert_windows(stored)
    s = await store.fleet_summary(device_ids=None, start=T0, end=T0 + 600)
    assert s.devices_reporting == 1 and s.readings == 120
    (temp,) = s.metrics
    assert temp.count == 120 and temp.max == v.max()


async def test_fleet_summary_over_a_day_follows_corrected_windows(store: MonitoringStore) -> None:
    """Long ranges read whole hours from rollups on PostgreSQL: the figures must stay those of
    the windows, edges and late corrections included."""
    rng = np.random.default_rng(8)
    span = 30 * 3600
    data: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    stored: list[WindowStats] = []
    for d in ("d1", "d2", "d3"):
        ts, _ = readings(rng, n=1500, span=span)
        for m in ("temp", "hum"):
            v = rng.normal(20.0, 5.0, size=len(ts))
            data[(d, m)] = (ts, v)
            stored += windows_of(d, m, ts, v, 60)
    stored += windows_of("d1", "temp", np.array([T0 + 5.0]), np.array([1.0]), 10)  # a 2nd size
    await store.upsert_windows(stored)
    start, end = T0 + 1234.5, T0 + 27 * 3600 + 77.0  # edges inside hours

    def expected(ids: list[str]) -> tuple[int, int, dict[str, tuple[int, float, float, float]]]:
        devices, total = 0, 0
        per_metric: dict[str, list[np.ndarray]] = {}
        for d in ids:
            ts = data[(d, "temp")][0]
            w0 = np.floor(ts / 60) * 60
            keep = (w0 >= start) & (w0 < end)
            devices += bool(keep.any())
            total += int(keep.sum())
            for m in ("hum", "temp"):
                per_metric.setdefault(m, []).append(data[(d, m)][1][keep])
        out = {}
        for m, parts in per_metric.items():
            v = np.concatenate(parts)
            out[m] = (len(v), float(v.min()), float(v.max()), float(v.mean()))
        return devices, total, out

    async def check(ids: list[str] | None) -> None:
        s = await store.fleet_summary(device_ids=ids, start=start, end=end)
        devices, total, per_metric = expected(ids or ["d1", "d2", "d3"])
        assert (s.devices_reporting, s.readings) == (devices, total)
        got = {ms.metric: (ms.count, ms.min, ms.max, ms.mean) for ms in s.metrics}
        assert got.keys() == per_metric.keys()
        for m, (n, lo, hi, mean) in per_metric.items():
            assert got[m][:3] == (n, lo, hi)
            assert got[m][3] == pytest.approx(mean, rel=1e-9)

    await check(None)
    await check(["d2"])
    # A late correction rewrites a window in the middle of the range (the agents re-upsert a
    # closed window with the late reading in it): the long-range figures follow.
    ts, v = data[("d2", "temp")]
    mid = T0 + 12 * 3600 + 60 * 7
    extra_t, extra_v = np.array([mid + 1.5]), np.array([99.0])
    for m in ("temp", "hum"):
        ts, v = data[("d2", m)]
        order = np.argsort(np.r_[ts, extra_t], kind="stable")
        data[("d2", m)] = (np.r_[ts, extra_t][order], np.r_[v, extra_v][order])
        nt, nv = data[("d2", m)]
        inw = (nt >= mid) & (nt < mid + 60)
        await store.upsert_windows(
            [w for w in windows_of("d2", m, nt[inw], nv[inw], 60, updated=2.0)]
        )
    await check(None)
    await check(["d2", "d3"])


# -- alerts ----------------------------------------------------------------------------------
async def test_alert_lifecycle(store: MonitoringStore) -> None:
    a = alert(1)
    await store.upsert_alerts([a])
    await store.upsert_alerts([a])
    assert await store.get_alert("a1") == a
    assert await store.get_alert("nope") is None
    assert await store.transition_alert("nope", status="acknowledged", by="u", at=T0) is None

    acked = await store.transition_alert("a1", status="acknowledged", by="op@x", at=T0 + 50)
    assert acked is not None
    assert acked.status == "acknowledged"
    assert acked.acknowledged_by == "op@x" and acked.acknowledged_at == T0 + 50
    # acknowledging twice is harmless
    assert await store.transition_alert("a1", status="acknowledged", by="other", at=T0 + 60) == (
        acked
    )
    # the agents' next "still active, new value" update does not undo the acknowledgement
    await store.upsert_alerts([alert(1, value=35.0, updated_at=T0 + 70)])
    cur = await store.get_alert("a1")
    assert cur is not None
    assert cur.status == "acknowledged" and cur.value == 35.0 and cur.acknowledged_by == "op@x"

    cleared = await store.transition_alert("a1", status="cleared", by="op@x", at=T0 + 80)
    assert cleared is not None and cleared.status == "cleared" and cleared.cleared_at == T0 + 80
    with pytest.raises(AlertTransitionError) as err:
        await store.transition_alert("a1", status="acknowledged", by="op@x", at=T0 + 90)
    assert err.value.current.status == "cleared"
    await store.upsert_alerts([alert(1, updated_at=T0 + 100)])  # a stale replay of "active"
    final = await store.get_alert("a1")
    assert final is not None and final.status == "cleared"

    # active → cleared directly (the condition went away)
    await store.upsert_alerts([alert(2)])
    direct = await store.transition_alert("a2", status="cleared", by=None, at=T0 + 5)
    assert direct is not None and direct.status == "cleared"
    with pytest.raises(ValueError):
        await store.transition_alert("a2", status="active", by=None, at=T0 + 6)


async def test_alert_upsert_batch_with_several_states(store: MonitoringStore) -> None:
    states = [
        alert(1),
        alert(
            1, status="acknowledged", acknowledged_by="u", acknowledged_at=T0 + 5, updated_at=T0 + 5
        ),
        alert(1, status="cleared", cleared_at=T0 + 9, updated_at=T0 + 9),
    ]
    await store.upsert_alerts(list(reversed(states)))
    got = await store.get_alert("a1")
    assert got is not None
    assert (got.status, got.acknowledged_by, got.cleared_at) == ("cleared", "u", T0 + 9)


async def test_query_alerts_filters(store: MonitoringStore) -> None:
    await store.upsert_alerts(
        [
            alert(1, device_id="d1", severity="info"),
            alert(2, device_id="d1", severity="warning"),
            alert(3, device_id="d2", severity="critical"),
            alert(4, device_id="d3", severity="critical"),
            alert(5, device_id="d2", severity="warning"),
        ]
    )
    await store.transition_alert("a3", status="acknowledged", by="u", at=T0 + 10)

    def ids(alerts: list[Alert]) -> list[str]:
        return [a.alert_id for a in alerts]

    assert ids(await store.query_alerts()) == ["a5", "a4", "a3", "a2", "a1"]
    assert ids(await store.query_alerts(device_ids=["d1", "d2"])) == ["a5", "a3", "a2", "a1"]
    assert ids(await store.query_alerts(device_ids=[])) == []
    assert ids(await store.query_alerts(status="acknowledged")) == ["a3"]
    assert ids(await store.query_alerts(min_severity="warning")) == ["a5", "a4", "a3", "a2"]
    assert ids(await store.query_alerts(min_severity="critical", status="active")) == ["a4"]
    assert ids(await store.query_alerts(start=T0 + 2, end=T0 + 4)) == ["a3", "a2"]
    assert ids(await store.query_alerts(limit=2, offset=1)) == ["a4", "a3"]
    with pytest.raises(ValueError):
        await store.query_alerts(min_severity="apocalyptic")


# -- device rules ----------------------------------------------------------------------------
async def test_device_rules_survive_and_keep_newest_version(store: MonitoringStore) -> None:
    cfg1 = {"metrics": [{"name": "temp"}], "rules": [{"type": "threshold", "id": "hot"}]}
    cfg2 = {"metrics": [{"name": "temp"}], "rules": []}
    await store.upsert_device_rules(
        [
            DeviceRules("d1", "u1", "thermo", cfg1, 1),
            DeviceRules("d2", None, None, {}, 1),
        ]
    )
    await store.upsert_device_rules([DeviceRules("d1", "u1", "thermo", cfg2, 2)])
    await store.upsert_device_rules([DeviceRules("d1", "u1", "thermo", cfg1, 1)])  # stale event
    await store.upsert_device_rules([DeviceRules("d2", None, None, {}, 2, active=False)])
    assert await store.load_device_rules() == [
        DeviceRules("d1", "u1", "thermo", cfg2, 2),
        DeviceRules("d2", None, None, {}, 2, active=False),
    ]


# -- subscriptions and deliveries ------------------------------------------------------------
async def test_subscriptions_and_deliveries(store: MonitoringStore) -> None:
    s1 = Subscription("s1", "u1", "http://h/1", "k1", ["d1"], "warning", None, T0)
    s2 = Subscription("s2", "u2", "http://h/2", "k2", None, "info", ["threshold"], T0 + 1)
    await store.create_subscription(s1)
    await store.create_subscription(s2)
    assert await store.list_subscriptions(owner_id="u1") == [s1]
    assert await store.list_subscriptions(owner_id=None) == [s1, s2]
    assert not await store.delete_subscription("s2", owner_id="u1")  # not the owner's
    assert await store.list_subscriptions(owner_id="u2") == [s2]

    def delivery(i: int, sub: str = "s1", **kw: Any) -> Delivery:
        base: dict[str, Any] = {
            "id": f"dl{i}",
            "subscription_id": sub,
            "payload": {"alert_id": f"a{i}", "nested": {"v": [1, 2.5]}},
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": T0 + i,
            "last_error": None,
            "created_at": T0 + i,
            "updated_at": T0 + i,
        }
        base.update(kw)
        return Delivery(**base)

    batch = [delivery(1), delivery(2), delivery(3, sub="s2")]
    await store.enqueue_deliveries(batch)
    # idempotent: the same ids again (even with other contents) change nothing
    await store.enqueue_deliveries([delivery(1, attempts=9), delivery(2)])
    assert await store.due_deliveries(now=T0 + 2, limit=10) == batch[:2]
    assert await store.due_deliveries(now=T0 + 10, limit=1) == batch[:1]

    failed_once = delivery(
        1, attempts=1, next_attempt_at=T0 + 30, last_error="HTTP 500", updated_at=T0 + 10
    )
    await store.update_delivery(failed_once)
    assert await store.due_deliveries(now=T0 + 10, limit=10) == [batch[1], batch[2]]
    done = delivery(2, status="delivered", attempts=1, updated_at=T0 + 11)
    await store.update_delivery(done)
    assert await store.list_deliveries(subscription_id="s1") == [done, failed_once]
    assert await store.list_deliveries(subscription_id="s1", status="delivered") == [done]
    assert await store.due_deliveries(now=T0 + 31, limit=10) == [batch[2], failed_once]
    assert await store.due_deliveries(now=T0 + 31, limit=10, exclude_subscriptions=["s2"]) == [
        failed_once
    ]
    claimed = await store.due_deliveries(
        now=T0 + 31, limit=10, lease_seconds=5, exclude_subscriptions=["s1", "s3"]
    )
    assert [d.id for d in claimed] == [batch[2].id]

    assert await store.delete_subscription("s1", owner_id="u1")
    assert await store.list_subscriptions(owner_id=None) == [s2]
    assert await store.list_deliveries(subscription_id="s1") == []


async def test_due_deliveries_lease_claims_once(store: MonitoringStore) -> None:
    """Two API instances polling at once never get the same delivery while it is leased."""
    await store.create_subscription(
        Subscription("s1", "u1", "http://h/1", "k1", None, "info", None, T0)
    )
    deliveries = [
        Delivery(f"dl{i}", "s1", {"i": i}, "pending", 0, T0 + i, None, T0 + i, T0 + i)
        for i in range(6)
    ]
    # a delivery for a subscription that no longer exists is not enqueued
    orphan = Delivery("orphan", "gone", {}, "pending", 0, T0, None, T0, T0)
    await store.enqueue_deliveries([*deliveries, orphan])
    lease = store.due_deliveries
    first, second = await asyncio.gather(
        lease(now=T0 + 10, limit=4, lease_seconds=30),
        lease(now=T0 + 10, limit=4, lease_seconds=30),
    )
    ids = [d.id for d in first + second]
    assert sorted(ids) == [f"dl{i}" for i in range(6)]  # each claimed exactly once
    assert all(d.next_attempt_at == T0 + 40 for d in first + second)
    assert await store.due_deliveries(now=T0 + 39, limit=10) == []
    assert len(await store.due_deliveries(now=T0 + 40, limit=10)) == 6  # lease ran out


async def test_query_windows_several_metrics_and_sizes(store: MonitoringStore) -> None:
    rng = np.random.default_rng(3)
    batch: list[WindowStats] = []
    for metric in ("a", "b", "c"):
        ts, v = readings(rng, n=100, span=120)
        batch += windows_of("d1", metric, ts, v, 10) + windows_of("d1", metric, ts, v, 60)
    await store.upsert_windows(batch)
    got = await store.query_windows(
        "d1", metrics=["c", "a"], window_seconds=60, start=T0, end=T0 + 120
    )
    assert [(w.metric, w.window_start) for w in got] == [
        ("a", T0),
        ("a", T0 + 60),
        ("c", T0),
        ("c", T0 + 60),
    ]
    assert all(w.window_seconds == 60 for w in got)


async def test_recent_samples_fleet_wide_around_now(store: MonitoringStore) -> None:
    """Live data: the newest page is found whether it spans seconds or hours."""
    now = time.time()
    ages = [5, 10, 20, 2000, 2100, 2200, 2300, 2400, 90_000]
    rows = [("d1" if i % 2 else "d2", "temp", now - age, float(i), i) for i, age in enumerate(ages)]
    await store.insert_samples(sample_batch(rows))
    newest = await store.recent_samples(device_ids=None, limit=5)
    assert [s.value for s in newest] == [0.0, 1.0, 2.0, 3.0, 4.0]
    page = await store.recent_samples(device_ids=None, limit=3, offset=6)
    assert [s.value for s in page] == [6.0, 7.0, 8.0]
    since = await store.recent_samples(device_ids=None, since=now - 1000, limit=10)
    assert [s.value for s in since] == [0.0, 1.0, 2.0]


# -- refused readings ------------------------------------------------------------------------
def dead_letter(i: int, device: str | None = "d1", **kw: Any) -> DeadLetter:
    base: dict[str, Any] = {
        "reason": "non_finite",
        "source": "mqtt",
        "payload": b'{"ts": 1, "metrics": {"temp": NaN}}',
        "ts": T0 + i,
        "device_id": device,
        "detail": "metric 'temp' is not finite",
    }
    base.update(kw)
    return DeadLetter(**base)


def kept(i: int, dl: DeadLetter) -> DeadLetterRecord:
    rec = deadletter_record(dl, id=f"telemetry.deadletter/0/{i}")
    assert rec is not None
    return rec


async def test_deadletters_per_device_newest_first_and_counted(store: MonitoringStore) -> None:
    recs = [
        kept(0, dead_letter(0)),
        kept(1, dead_letter(1, reason="not_json", payload=b"\xff\xfe garbage", detail=None)),
        kept(2, dead_letter(2, device="d2", reason="too_old")),
        kept(3, dead_letter(3)),
        # refused for a NUL in a metric name: stored anyway (PostgreSQL text cannot hold NUL)
        kept(4, dead_letter(4, device="d3", payload=b'{"te\x00mp": 1}', detail="te\x00mp")),
    ]
    await store.insert_deadletters(recs)
    await store.insert_deadletters(recs[:2])  # a replay stores nothing twice
    assert await store.query_deadletters(device_ids=["d1"]) == [recs[3], recs[1], recs[0]]
    assert recs[1].payload == "\ufffd\ufffd garbage"  # bytes that are no UTF-8 are replaced
    assert await store.query_deadletters(device_ids=["d1"], limit=1) == [recs[3]]
    assert await store.query_deadletters(device_ids=["d1"], before=T0 + 3) == recs[1::-1]
    # the next page after an exact (ts, id): strictly older in that order
    after = (recs[3].ts, recs[3].id)
    assert await store.query_deadletters(device_ids=["d1"], after=after) == recs[1::-1]
    assert await store.query_deadletters(device_ids=["d1"], after=(recs[1].ts, recs[1].id)) == [
        recs[0]
    ]
    assert await store.query_deadletters(device_ids=["d1"], reason="not_json") == [recs[1]]
    assert await store.query_deadletters(device_ids=[]) == []
    assert len(await store.query_deadletters(device_ids=None)) == 5
    assert await store.query_deadletters(device_ids=["d3"]) == [recs[4]]

    counts = store.deadletter_counts
    assert await counts(device_ids=None, start=T0, end=T0 + 10) == {
        "non_finite": 3,
        "not_json": 1,
        "too_old": 1,
    }
    assert await counts(device_ids=["d1"], start=T0 + 1, end=T0 + 3) == {"not_json": 1}
    assert await counts(device_ids=[], start=T0, end=T0 + 10) == {}

    assert await store.delete_deadletters_before(T0 + 2) == 2
    assert await store.query_deadletters(device_ids=None) == [recs[4], recs[3], recs[2]]


def test_deadletter_record_truncates_and_needs_a_device() -> None:
    big = dead_letter(0, payload=b"x" * (DEADLETTER_PAYLOAD_BYTES + 1))
    rec = kept(0, big)
    assert rec.payload == "x" * DEADLETTER_PAYLOAD_BYTES and rec.payload_truncated
    assert not kept(1, dead_letter(1)).payload_truncated
    # cut upstream already (the bridge keeps at most max_payload_bytes of a refused body)
    assert kept(
        2, dead_letter(2, detail="too big (payload truncated to its first 9 bytes)")
    ).payload_truncated
    assert deadletter_record(dead_letter(3, device=None), id="x") is None
    nul = kept(4, dead_letter(4, payload=b'{"te\x00mp": 1}', detail="bad name 'te\x00mp'"))
    assert "\x00" not in nul.payload + (nul.detail or "")
