"""Queries return what was written, only to those who may see it; bad input is a 422."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from iot_common.events import WindowStats
from monitoring_store.base import SampleBatch


def window(
    device: str, metric: str, start: float, values: list[float], size: int = 60
) -> WindowStats:
    arr = np.asarray(values)
    return WindowStats(
        device_id=device,
        metric=metric,
        window_seconds=size,
        window_start=start,
        count=len(values),
        min=float(arr.min()),
        max=float(arr.max()),
        mean=float(arr.mean()),
        stddev=float(arr.std()),
        p50=float(np.percentile(arr, 50)),
        p95=float(np.percentile(arr, 95)),
        last=float(arr[-1]),
        last_ts=start + size - 1,
    )


@pytest.fixture
async def seeded(app_factory: Any, make_user: Any, registry: Any, store: Any) -> dict[str, Any]:
    alice, bob, admin = make_user("operator"), make_user("viewer"), make_user("admin")
    dev_a = await registry.add(alice, metrics=["temp", "hum"])
    dev_b = await registry.add(bob)
    base = math.floor(time.time() / 3600) * 3600 - 3600  # an hour ago, hour-aligned
    per_minute = {i: [20.0 + i, 21.0 + i, 25.0 + i * 2] for i in range(10)}
    await store.upsert_windows(
        [window(dev_a, "temp", base + 60 * i, v) for i, v in per_minute.items()]
        + [window(dev_a, "hum", base + 60 * i, [50.0, 52.0]) for i in range(10)]
        + [window(dev_b, "temp", base + 60 * i, [99.0]) for i in range(10)]
    )
    n = 30
    ts = base + np.arange(n, dtype=np.float64) * 10
    await store.insert_samples(
        SampleBatch(
            device_id=np.array([dev_a] * n + [dev_b] * n, dtype=object),
            metric=np.array(["temp"] * (2 * n), dtype=object),
            ts=np.concatenate([ts, ts]),
            value=np.concatenate([np.arange(n, dtype=np.float64), np.full(n, -1.0)]),
            seq=np.concatenate([np.arange(n), np.arange(n)]).astype(np.int64),
        )
    )
    running = await app_factory(kafka_enabled=False)
    return {
        "c": running.client,
        "alice": alice,
        "bob": bob,
        "admin": admin,
        "dev_a": dev_a,
        "dev_b": dev_b,
        "base": base,
        "per_minute": per_minute,
        "n": n,
    }


async def test_one_minute_buckets_are_the_stored_windows(seeded: dict[str, Any]) -> None:
    s = seeded
    r = await s["c"].get(
        f"/monitoring/data/{s['dev_a']}",
        params={"start": s["base"], "end": s["base"] + 600, "interval": "1m", "metric": "temp"},
        headers=s["alice"].headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["metric"] for x in body["series"]] == ["temp"]
    points = body["series"][0]["points"]
    assert len(points) == 10
    for i, p in enumerate(points):
        vals = s["per_minute"][i]
        assert p["t"] == s["base"] + 60 * i
        assert p["count"] == 3
        assert p["min"] == min(vals) and p["max"] == max(vals) and p["last"] == vals[-1]
        assert p["mean"] == pytest.approx(sum(vals) / 3)
        assert p["p50"] == pytest.approx(sorted(vals)[1])


async def test_columns_layout_carries_the_same_numbers(seeded: dict[str, Any]) -> None:
    s = seeded
    params = {"start": s["base"], "end": s["base"] + 600, "interval": "1m", "metric": "temp"}
    points = (
        await s["c"].get(
            f"/monitoring/data/{s['dev_a']}", params=params, headers=s["alice"].headers
        )
    ).json()["series"][0]["points"]
    r = await s["c"].get(
        f"/monitoring/data/{s['dev_a']}",
        params={**params, "layout": "columns", "aggregate": ["mean", "count"]},
        headers=s["alice"].headers,
    )
    assert r.status_code == 200, r.text
    cols = r.json()["series"][0]["columns"]
    assert set(cols) == {"t", "mean", "count"}
    assert cols["t"] == [p["t"] for p in points]
    assert cols["mean"] == [p["mean"] for p in points]
    assert cols["count"] == [3] * 10


async def test_five_minute_buckets_reaggregate(seeded: dict[str, Any]) -> None:
    s = seeded
    r = await s["c"].get(
        f"/monitoring/data/{s['dev_a']}",
        params={
            "start": s["base"],
            "end": s["base"] + 600,
            "interval": "5m",
            "metric": ["temp", "hum"],
            "aggregate": ["count", "min", "max", "mean"],
        },
        headers=s["alice"].headers,
    )
    assert r.status_code == 200, r.text
    series = {x["metric"]: x["points"] for x in r.json()["series"]}
    assert set(series) == {"temp", "hum"}
    first = [v for i in range(5) for v in s["per_minute"][i]]
    p0 = series["temp"][0]
    assert set(p0) == {"t", "count", "min", "max", "mean"}
    assert p0["count"] == 15 and p0["min"] == min(first) and p0["max"] == max(first)
    assert p0["mean"] == pytest.approx(sum(first) / 15)
    assert series["hum"][1]["count"] == 10


async def test_raw_samples_are_what_was_written(seeded: dict[str, Any]) -> None:
    s = seeded
    r = await s["c"].get(
        f"/monitoring/data/{s['dev_a']}",
        params={"start": s["base"], "end": s["base"] + 3600, "interval": "raw", "limit": 20},
        headers=s["alice"].headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["truncated"] is True
    assert [x["value"] for x in body["samples"]] == [float(i) for i in range(20)]
    assert [x["seq"] for x in body["samples"]] == list(range(20))


async def test_a_range_without_data_is_an_empty_answer(seeded: dict[str, Any]) -> None:
    s = seeded
    for interval in ("1m", "5m", "raw"):
        r = await s["c"].get(
            f"/monitoring/data/{s['dev_a']}",
            params={"start": s["base"] - 3600, "end": s["base"] - 60, "interval": interval},
            headers=s["alice"].headers,
        )
        assert r.status_code == 200, (interval, r.text)
        body = r.json()
        assert not any(x["points"] for x in body["series"]), (interval, body)
        assert not body.get("samples"), (interval, body)


async def test_recent_data_only_covers_the_callers_devices(seeded: dict[str, Any]) -> None:
    s = seeded
    r = await s["c"].get("/monitoring/data", params={"limit": 7}, headers=s["alice"].headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 7 and body["next_offset"] == 7
    assert {x["device_id"] for x in body["items"]} == {s["dev_a"]}
    assert [x["value"] for x in body["items"]] == [float(v) for v in range(29, 22, -1)]
    page2 = (
        await s["c"].get(
            "/monitoring/data", params={"limit": 7, "offset": 7}, headers=s["alice"].headers
        )
    ).json()
    assert [x["value"] for x in page2["items"]] == [float(v) for v in range(22, 15, -1)]
    r = await s["c"].get("/monitoring/data", params={"limit": 100}, headers=s["admin"].headers)
    assert {s["dev_a"], s["dev_b"]} <= {x["device_id"] for x in r.json()["items"]}


async def test_recent_data_of_one_metric_since_an_instant(seeded: dict[str, Any]) -> None:
    s = seeded
    since = datetime.fromtimestamp(s["base"] + 200, UTC).isoformat()  # samples 20..29
    r = await s["c"].get(
        "/monitoring/data",
        params={"metric": "temp", "since": since, "limit": 100},
        headers=s["alice"].headers,
    )
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [x["value"] for x in items] == [float(v) for v in range(29, 19, -1)]
    assert {x["metric"] for x in items} == {"temp"}
    none = await s["c"].get(
        "/monitoring/data", params={"metric": "hum"}, headers=s["alice"].headers
    )
    assert none.status_code == 200 and none.json()["items"] == []
    bad = await s["c"].get(
        "/monitoring/data", params={"metric": "bad name!"}, headers=s["alice"].headers
    )
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["details"][0]["field"] == "metric"


async def test_fleet_stats_cover_the_callers_devices(seeded: dict[str, Any]) -> None:
    s = seeded
    params = {"start": s["base"], "end": s["base"] + 600}
    mine = (await s["c"].get("/monitoring/stats", params=params, headers=s["alice"].headers)).json()
    everyone = (
        await s["c"].get("/monitoring/stats", params=params, headers=s["admin"].headers)
    ).json()
    assert mine["devices_reporting"] == 1
    assert everyone["devices_reporting"] >= 2
    temp = {m["metric"]: m for m in mine["metrics"]}["temp"]
    assert temp["max"] == max(max(v) for v in s["per_minute"].values())
    r = await s["c"].get("/monitoring/stats", params={"range": "24h"}, headers=s["bob"].headers)
    assert r.status_code == 200 and r.json()["range"] == "24h"


async def test_another_owners_device_is_not_found(seeded: dict[str, Any]) -> None:
    s = seeded
    r = await s["c"].get(f"/monitoring/data/{s['dev_b']}", headers=s["alice"].headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = await s["c"].get(
        "/monitoring/data", params={"device_id": s["dev_b"]}, headers=s["alice"].headers
    )
    assert r.status_code == 404


async def test_no_token_is_401(seeded: dict[str, Any]) -> None:
    r = await seeded["c"].get(f"/monitoring/data/{seeded['dev_a']}")
    assert r.status_code == 401
    r = await seeded["c"].get("/monitoring/stats", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": 2000, "end": 1000}, "start"),
        ({"start": 0, "end": 86_400 * 30, "interval": "1m"}, "start"),
        ({"start": 0, "end": 86_400, "interval": "raw"}, "start"),
        ({"interval": "7m"}, "query.interval"),
        ({"metric": "pressure"}, "metric"),
        ({"metric": "bad name!"}, "metric"),
        ({"aggregate": "median"}, "query.aggregate.0"),
        ({"interval": "raw", "limit": 1_000_000}, "limit"),
        ({"start": "not-a-time"}, "query.start"),
        ({"start": "1960-01-01T00:00:00Z", "end": "1960-01-02T00:00:00Z"}, "start"),
        ({"start": "2020-01-01T00:00:00Z", "end": "9999-01-01T00:00:00Z"}, "end"),
    ],
)
async def test_bad_queries_are_422_in_the_common_shape(
    seeded: dict[str, Any], params: dict[str, Any], field: str
) -> None:
    r = await seeded["c"].get(
        f"/monitoring/data/{seeded['dev_a']}", params=params, headers=seeded["alice"].headers
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert field in {d["field"] for d in err["details"]}


async def test_page_size_over_the_cap_is_422(seeded: dict[str, Any]) -> None:
    s = seeded
    for path in ("/monitoring/data", "/monitoring/alerts"):
        r = await s["c"].get(path, params={"limit": 5000}, headers=s["alice"].headers)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == "limit"
