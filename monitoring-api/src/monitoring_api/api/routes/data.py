"""Readings and windowed stats of the caller's devices."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query

from monitoring_api import data_service
from monitoring_api.api.deps import (
    CurrentUser,
    DirectoryDep,
    SettingsDep,
    StoreDep,
    check_page_size,
    metric_names,
    scoped_device_ids,
    visible_device,
)
from monitoring_api.api.responses import DeviceDataResponse
from monitoring_api.schemas import AggregateName, DeviceData, Interval, Layout, RecentData

router = APIRouter(prefix="/monitoring/data", tags=["data"])


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
        metric_names([metric])
    ids = await scoped_device_ids(directory, caller, None if device_id is None else str(device_id))
    return await data_service.recent_readings(
        store=store, device_ids=ids, metric=metric, since=since, limit=limit, offset=offset
    )


@router.get("/{device_id}", response_model=DeviceData, response_class=DeviceDataResponse)
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
) -> DeviceDataResponse:
    """Raw samples or bucketed window stats of one device over a time range."""
    query = data_service.SeriesQuery(
        metrics=metric_names(metric),
        start=start,
        end=end,
        interval=interval,
        aggregates=aggregate,
        limit=limit,
        layout=layout,
    )
    device = await visible_device(directory, caller, str(device_id))
    series = await data_service.device_data(
        store=store, device=device, query=query, settings=settings
    )
    return DeviceDataResponse(series)
