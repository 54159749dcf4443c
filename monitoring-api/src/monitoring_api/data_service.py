"""Readings and windowed stats: what ``/monitoring/data`` answers, once the caller is known.

The routes parse and authorise; these functions apply the query limits, choose the stored
windows that serve a bucket size, and call the store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from iot_common.errors import ValidationFailed
from monitoring_api.config import MonitoringApiSettings
from monitoring_api.devices import DeviceInfo
from monitoring_api.schemas import (
    ALL_AGGREGATES,
    INTERVAL_SECONDS,
    AggregateName,
    Interval,
    Layout,
    RecentData,
    SamplePublic,
)
from monitoring_api.timeutil import resolve_range
from monitoring_store.base import BucketSeries, MonitoringStore, Sample


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """What a ``GET /monitoring/data/{device_id}`` asks for, as parsed from its parameters."""

    metrics: list[str] | None = None
    start: datetime | None = None
    end: datetime | None = None
    interval: Interval = "1m"
    aggregates: list[AggregateName] | None = None
    limit: int = 1000
    layout: Layout = "points"


@dataclass(frozen=True, slots=True)
class DeviceSeries:
    """The answer of :func:`device_data`, in the shape of ``schemas.DeviceData``.

    Bucketed stats stay the store's numpy columns (``series``): up to tens of thousands of
    points go from them to the JSON encoder without a Python object per point
    (``api.responses.DeviceDataResponse`` encodes this).
    """

    device_id: str
    start: float
    end: float
    interval: Interval
    aggregates: list[AggregateName] | None = None
    layout: Layout | None = None
    series: list[BucketSeries] = field(default_factory=list)
    samples: list[Sample] | None = None
    truncated: bool = False


async def recent_readings(
    *,
    store: MonitoringStore,
    device_ids: Sequence[str] | None,
    metric: str | None,
    since: datetime | None,
    limit: int,
    offset: int,
) -> RecentData:
    """Newest readings first across ``device_ids`` (None: every device; []: none)."""
    since_ts = None
    if since is not None:
        since_ts, _ = resolve_range(since, None, default_span=0, max_span=None)
    if device_ids is not None and not device_ids:
        return RecentData(items=[], limit=limit, offset=offset, next_offset=None)
    samples = await store.recent_samples(
        device_ids=device_ids, metric=metric, since=since_ts, limit=limit, offset=offset
    )
    items = [
        SamplePublic(device_id=s.device_id, metric=s.metric, ts=s.ts, value=s.value, seq=s.seq)
        for s in samples
    ]
    next_offset = offset + len(items) if len(items) == limit else None
    return RecentData(items=items, limit=limit, offset=offset, next_offset=next_offset)


async def device_data(
    *,
    store: MonitoringStore,
    device: DeviceInfo,
    query: SeriesQuery,
    settings: MonitoringApiSettings,
) -> DeviceSeries:
    """Raw samples or bucketed window stats of one (visible) device over a time range."""
    did = str(device["id"])
    _check_declared(query.metrics, declared_metrics(device))
    if query.interval == "raw":
        return await _raw(store=store, device_id=did, query=query, settings=settings)
    bucket = INTERVAL_SECONDS[query.interval]
    source = source_window(bucket, settings.window_sizes, interval=query.interval)
    max_span = float(settings.max_range(query.interval))
    start_ts, end_ts = resolve_range(
        query.start, query.end, default_span=min(max_span, bucket * 120), max_span=max_span
    )
    aligned_start = math.floor(start_ts / bucket) * bucket
    series = await store.aggregate_window_series(
        did,
        metrics=query.metrics,
        start=aligned_start,
        end=end_ts,
        bucket_seconds=bucket,
        source_window_seconds=source,
    )
    return DeviceSeries(
        device_id=did,
        start=aligned_start,
        end=end_ts,
        interval=query.interval,
        aggregates=list(dict.fromkeys(query.aggregates or ALL_AGGREGATES)),
        layout=query.layout,
        series=series,
    )


async def _raw(
    *, store: MonitoringStore, device_id: str, query: SeriesQuery, settings: MonitoringApiSettings
) -> DeviceSeries:
    cap = settings.max_raw_samples
    if query.limit > cap:
        raise ValidationFailed(
            f"limit exceeds the cap of {cap}",
            details=[{"field": "limit", "message": f"must be at most {cap}"}],
        )
    start_ts, end_ts = resolve_range(
        query.start, query.end, default_span=3600, max_span=settings.max_range("raw")
    )
    samples = await store.query_samples(
        device_id, metrics=query.metrics, start=start_ts, end=end_ts, limit=query.limit + 1
    )
    return DeviceSeries(
        device_id=device_id,
        start=start_ts,
        end=end_ts,
        interval="raw",
        samples=samples[: query.limit],
        truncated=len(samples) > query.limit,
    )


def source_window(bucket_seconds: int, window_sizes: Sequence[int], *, interval: str) -> int:
    """The stored window size a bucket is built from: the coarsest that divides it.

    Fewest rows to read; every bucket covers whole windows. The sizes are the ones the stream
    agents compute (``window_sizes``, shared as ``IOT_WINDOW_SIZES``).
    """
    fitting = [w for w in window_sizes if bucket_seconds % w == 0]
    if not fitting:
        sizes = ", ".join(f"{w} s" for w in sorted(window_sizes))
        raise ValidationFailed(
            f"interval {interval} is finer than the stored windows ({sizes})",
            details=[{"field": "interval", "message": "choose a coarser interval"}],
        )
    return max(fitting)


def declared_metrics(device: DeviceInfo) -> set[str] | None:
    """Metric names a device's config declares, None when it declares none (any is allowed)."""
    config = device.get("config") or {}
    metrics = config.get("metrics") if isinstance(config, dict) else None
    if not metrics:
        return None
    return {str(m["name"]) for m in metrics if isinstance(m, dict) and "name" in m}


def _check_declared(metrics: list[str] | None, known: set[str] | None) -> None:
    if not metrics or known is None:
        return
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise ValidationFailed(
            f"unknown metric {unknown[0]!r} for this device",
            details=[{"field": "metric", "message": f"{m!r} is not declared"} for m in unknown],
        )
