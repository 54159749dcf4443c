"""Fleet statistics over the caller's devices."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from monitoring_api.api.deps import CurrentUser, DirectoryDep, StoreDep, visible_device_ids
from monitoring_api.schemas import ROLLING_SECONDS, FleetStats, MetricStats, RollingRange
from monitoring_api.stats_service import fleet_stats
from monitoring_api.timeutil import resolve_range

router = APIRouter(prefix="/monitoring", tags=["stats"])

MAX_STATS_SPAN = 31 * 86_400


@router.get("/stats", response_model=FleetStats)
async def stats(
    caller: CurrentUser,
    store: StoreDep,
    directory: DirectoryDep,
    range: Annotated[
        RollingRange | None, Query(description="rolling range ending now (default 1h)")
    ] = None,
    start: Annotated[datetime | None, Query(description="explicit range start")] = None,
    end: Annotated[datetime | None, Query(description="explicit range end (default now)")] = None,
) -> FleetStats:
    """Devices reporting, readings per second, per-metric aggregates and alerts by severity."""
    if start is None and end is None:
        rolling = range or "1h"
        label: str | None = rolling
        start_ts, end_ts = resolve_range(
            None, None, default_span=ROLLING_SECONDS[rolling], max_span=None
        )
    else:
        label = None
        default_span = ROLLING_SECONDS[range] if range else 3600
        start_ts, end_ts = resolve_range(
            start, end, default_span=default_span, max_span=MAX_STATS_SPAN
        )
    ids = await visible_device_ids(directory, caller)
    return await fleet_stats(store, ids, start_ts, end_ts, label)


__all__ = ["FleetStats", "MetricStats", "router"]
