"""Fleet figures shared by ``GET /monitoring/stats`` and the Socket.IO ``fleet`` pushes."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monitoring_api.schemas import FleetStats, MetricStats
from monitoring_store.base import MonitoringStore


def _f(x: float) -> float:
    return x if math.isfinite(x) else 0.0


async def fleet_stats(
    store: MonitoringStore,
    device_ids: Sequence[str] | None,
    start: float,
    end: float,
    label: str | None,
) -> FleetStats:
    if device_ids is not None and not device_ids:
        return FleetStats(
            start=start,
            end=end,
            range=label,
            devices_reporting=0,
            readings=0,
            readings_per_second=0.0,
            metrics=[],
            alerts_by_severity={},
            deadletters_by_reason={},
        )
    summary = await store.fleet_summary(device_ids=device_ids, start=start, end=end)
    refused = await store.deadletter_counts(device_ids=device_ids, start=start, end=end)
    return FleetStats(
        start=summary.start,
        end=summary.end,
        range=label,
        devices_reporting=summary.devices_reporting,
        readings=summary.readings,
        readings_per_second=_f(summary.readings_per_second),
        metrics=[
            MetricStats(
                metric=m.metric, count=m.count, min=_f(m.min), max=_f(m.max), mean=_f(m.mean)
            )
            for m in summary.metrics
        ],
        alerts_by_severity=dict(summary.alerts_by_severity),
        deadletters_by_reason=refused,
    )
