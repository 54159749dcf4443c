"""Readings and windowed stats of the caller's devices."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable
from datetime import datetime
from itertools import repeat
from typing import Annotated, Any

import msgspec
import orjson
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from msgspec import UNSET, UnsetType

from iot_common.errors import ValidationFailed
from monitoring_api.api.deps import (
    CurrentUser,
    DirectoryDep,
    SettingsDep,
    StoreDep,
    check_page_size,
    declared_metrics,
    scoped_device_ids,
    visible_device,
)
from monitoring_api.schemas import (
    ALL_AGGREGATES,
    INTERVAL_SECONDS,
    AggregateName,
    DeviceData,
    Interval,
    Layout,
    RecentData,
    SamplePublic,
)
from monitoring_api.timeutil import resolve_range


class _Point(msgspec.Struct, omit_defaults=True):
    """One bucket of the points layout (an unrequested aggregate is UNSET, left out)."""

    t: float
    count: int | UnsetType = UNSET
    min: float | UnsetType = UNSET
    max: float | UnsetType = UNSET
    mean: float | UnsetType = UNSET
    p50: float | UnsetType = UNSET
    p95: float | UnsetType = UNSET
    last: float | UnsetType = UNSET


_POINT_AGGS: tuple[str, ...] = _Point.__struct_fields__[1:]
assert set(_POINT_AGGS) == set(ALL_AGGREGATES)
#: msgspec writes a non-finite float (which no stored window should hold) as null.
_encode_points = msgspec.json.Encoder().encode


router = APIRouter(prefix="/monitoring/data", tags=["data"])

METRIC_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
MAX_METRICS_PER_QUERY = 64


def _metrics(raw: list[str] | None) -> list[str] | None:
    """Accept ``metric=a&metric=b`` and ``metric=a,b``; 422 for a malformed name."""
    if not raw:
        return None
    names: list[str] = []
    for part in raw:
        names.extend(p.strip() for p in part.split(",") if p.strip())
    if len(names) > MAX_METRICS_PER_QUERY:
        raise ValidationFailed(
            "too many metrics",
            details=[{"field": "metric", "message": f"at most {MAX_METRICS_PER_QUERY}"}],
        )
    for name in names:
        if not METRIC_RE.match(name):
            raise ValidationFailed(
                f"unknown metric {name!r}",
                details=[{"field": "metric", "message": f"{name!r} is not a metric name"}],
            )
    return list(dict.fromkeys(names)) or None


@router.get("", response_model=RecentData)
async def recent_data(
    caller: CurrentUser,
    store: StoreDep,
    directory: DirectoryDep,
    settings: SettingsDep,
    device_id: Annotated[uuid.UUID | None, Query(description="only this device")] = None,
    metric: Annotated[str | None, Query(max_length=64, description="only this metric")] = None,
    since: Annotated[datetime | None, Query(description="readings at or after this time")] = None,
    limit: Annotated[int, Query(ge=1, description="page size (capped)")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> RecentData:
    """Most recent readings across the caller's devices, newest first."""
    check_page_size(limit, settings)
    if metric is not None:
        _metrics([metric])
    since_ts = None
    if since is not None:
        since_ts, _ = resolve_range(since, None, default_span=0, max_span=None)
    ids = await scoped_device_ids(directory, caller, None if device_id is None else str(device_id))
    if ids == []:
        return RecentData(items=[], limit=limit, offset=offset, next_offset=None)
    samples = await store.recent_samples(
        device_ids=ids, metric=metric, since=since_ts, limit=limit, offset=offset
    )
    items = [
        SamplePublic(device_id=s.device_id, metric=s.metric, ts=s.ts, value=s.value, seq=s.seq)
        for s in samples
    ]
    next_offset = offset + len(items) if len(items) == limit else None
    return RecentData(items=items, limit=limit, offset=offset, next_offset=next_offset)


@router.get("/{device_id}", response_model=DeviceData)
async def device_data(
    caller: CurrentUser,
    store: StoreDep,
    directory: DirectoryDep,
    settings: SettingsDep,
    device_id: Annotated[uuid.UUID, Path()],
    start: Annotated[datetime | None, Query(description="epoch seconds or RFC 3339")] = None,
    end: Annotated[datetime | None, Query(description="epoch seconds or RFC 3339")] = None,
    metric: Annotated[
        list[str] | None, Query(description="metric name(s); repeat or comma-separate")
    ] = None,
    interval: Annotated[Interval, Query(description="raw samples or bucket size")] = "1m",
    aggregate: Annotated[
        list[AggregateName] | None, Query(description="aggregates per bucket (default all)")
    ] = None,
    limit: Annotated[int, Query(ge=1, description="raw samples at most (capped)")] = 1000,
    layout: Annotated[
        Layout,
        Query(description="points: one object per bucket; columns: one array per aggregate"),
    ] = "points",
) -> DeviceData:
    """Raw samples or bucketed window stats of one device over a time range."""
    metrics = _metrics(metric)
    device = await visible_device(directory, caller, str(device_id))
    known = declared_metrics(device)
    if metrics and known is not None:
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise ValidationFailed(
                f"unknown metric {unknown[0]!r} for this device",
                details=[{"field": "metric", "message": f"{m!r} is not declared"} for m in unknown],
            )
    did = str(device_id)
    if interval == "raw":
        if limit > settings.max_raw_samples:
            raise ValidationFailed(
                f"limit exceeds the cap of {settings.max_raw_samples}",
                details=[
                    {"field": "limit", "message": f"must be at most {settings.max_raw_samples}"}
                ],
            )
        start_ts, end_ts = resolve_range(
            start, end, default_span=3600, max_span=settings.max_range_raw
        )
        samples = await store.query_samples(
            did, metrics=metrics, start=start_ts, end=end_ts, limit=limit + 1
        )
        truncated = len(samples) > limit
        return DeviceData(
            device_id=did,
            start=start_ts,
            end=end_ts,
            interval="raw",
            samples=[
                SamplePublic(device_id=did, metric=s.metric, ts=s.ts, value=s.value, seq=s.seq)
                for s in samples[:limit]
            ],
            truncated=truncated,
        )
    bucket = INTERVAL_SECONDS[interval]
    max_span = float(getattr(settings, f"max_range_{interval}"))
    start_ts, end_ts = resolve_range(
        start, end, default_span=min(max_span, bucket * 120), max_span=max_span
    )
    aligned_start = math.floor(start_ts / bucket) * bucket
    aggs = list(dict.fromkeys(aggregate)) if aggregate else list(ALL_AGGREGATES)
    series = await store.aggregate_window_series(
        did,
        metrics=metrics,
        start=aligned_start,
        end=end_ts,
        bucket_seconds=bucket,
        source_window_seconds=10 if bucket == 10 else 60,
    )
    # Up to tens of thousands of points, straight from the store's numpy columns to the JSON
    # encoder (the response model documents the shape; validating it again would double the
    # cost). A non-finite value, which no stored window should hold, is encoded as null.
    keys = ("t", *aggs)
    out: list[dict[str, Any]] = []
    for s in series:
        if layout == "columns":
            cols = [s.bucket_start, *(getattr(s, a) for a in aggs)]
            out.append({"metric": s.metric, "columns": dict(zip(keys, cols, strict=True))})
        else:
            # One msgspec struct per point, unrequested aggregates left out: half the cost
            # of building and encoding a dict per point.
            fields: list[Iterable[Any]] = [s.bucket_start.tolist()]
            fields += [getattr(s, a).tolist() if a in aggs else repeat(UNSET) for a in _POINT_AGGS]
            out.append({"metric": s.metric, "points": list(map(_Point, *fields))})
    body = {
        "device_id": did,
        "start": aligned_start,
        "end": end_ts,
        "interval": interval,
        "aggregates": aggs,
        "layout": layout,
        "series": out,
        "samples": None,
        "truncated": False,
    }
    raw = (
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        if layout == "columns"
        else _encode_points(body)
    )
    return Response(raw, media_type="application/json")  # type: ignore[return-value]
