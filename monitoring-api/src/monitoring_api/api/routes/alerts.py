"""Alerts of the caller's devices: list, acknowledge, clear."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from iot_common.events import AlertStatus
from monitoring_api import alerts_service
from monitoring_api.api.deps import (
    CurrentUser,
    DirectoryDep,
    PublisherDep,
    SettingsDep,
    StoreDep,
    VisibleAlert,
    WriterUser,
    check_page_size,
    scoped_device_ids,
)
from monitoring_api.schemas import AlertList, AlertPublic, AlertStatusName, SeverityName

router = APIRouter(prefix="/monitoring/alerts", tags=["alerts"])


@router.get("", response_model=AlertList)
async def list_alerts(
    caller: CurrentUser,
    store: StoreDep,
    directory: DirectoryDep,
    settings: SettingsDep,
    status: Annotated[AlertStatusName | None, Query()] = None,
    severity: Annotated[SeverityName | None, Query(description="minimum severity")] = None,
    device_id: Annotated[uuid.UUID | None, Query()] = None,
    start: Annotated[datetime | None, Query(description="alerts started at or after")] = None,
    end: Annotated[datetime | None, Query(description="alerts started at or before")] = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> AlertList:
    """Alerts, newest first, filtered by status, minimum severity, device and time."""
    check_page_size(limit, settings)
    ids = await scoped_device_ids(directory, caller, None if device_id is None else str(device_id))
    return await alerts_service.list_alerts(
        store=store,
        device_ids=ids,
        status=status,
        min_severity=severity,
        start=start,
        end=end,
        limit=limit,
        offset=offset,
    )


@router.get("/{alert_id}", response_model=AlertPublic)
async def get_alert(alert: VisibleAlert) -> AlertPublic:
    return alerts_service.public(alert)


@router.post("/{alert_id}/ack", response_model=AlertPublic)
async def acknowledge(
    caller: WriterUser, alert: VisibleAlert, store: StoreDep, publisher: PublisherDep
) -> AlertPublic:
    """Acknowledge an active alert (stays acknowledged while its condition holds)."""
    return await alerts_service.transition(
        store=store,
        publisher=publisher,
        alert=alert,
        status=AlertStatus.ACKNOWLEDGED,
        by=caller.user_id,
    )


@router.post("/{alert_id}/clear", response_model=AlertPublic)
async def clear(
    caller: WriterUser, alert: VisibleAlert, store: StoreDep, publisher: PublisherDep
) -> AlertPublic:
    """Clear an alert; if its condition still holds the agents open a new one."""
    return await alerts_service.transition(
        store=store, publisher=publisher, alert=alert, status=AlertStatus.CLEARED, by=caller.user_id
    )
