"""Alerts of the caller's devices: list, acknowledge, clear."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from fastapi import APIRouter, Path, Query

from iot_common.errors import Conflict, NotFound
from iot_common.events import Alert, AlertStatus
from monitoring_api.api.deps import (
    Caller,
    CurrentUser,
    DirectoryDep,
    PublisherDep,
    SettingsDep,
    StoreDep,
    WriterUser,
    check_page_size,
    scoped_device_ids,
)
from monitoring_api.devices import DeviceDirectory
from monitoring_api.schemas import AlertList, AlertPublic, AlertStatusName, SeverityName
from monitoring_api.timeutil import resolve_range
from monitoring_store import AlertTransitionError
from monitoring_store.base import MonitoringStore

router = APIRouter(prefix="/monitoring/alerts", tags=["alerts"])

AlertId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]


def public(alert: Alert) -> AlertPublic:
    return AlertPublic(**msgspec.structs.asdict(alert))


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
    start_ts = end_ts = None
    if start is not None or end is not None:
        start_ts, end_ts = resolve_range(start, end, default_span=time.time(), max_span=None)
    ids = await scoped_device_ids(directory, caller, None if device_id is None else str(device_id))
    if ids == []:
        return AlertList(items=[], limit=limit, offset=offset, next_offset=None)
    alerts = await store.query_alerts(
        device_ids=ids,
        status=status,
        min_severity=severity,
        start=start_ts,
        end=end_ts,
        limit=limit,
        offset=offset,
    )
    next_offset = offset + len(alerts) if len(alerts) == limit else None
    return AlertList(
        items=[public(a) for a in alerts], limit=limit, offset=offset, next_offset=next_offset
    )


async def _visible_alert(
    store: MonitoringStore, directory: DeviceDirectory, caller: Caller, alert_id: str
) -> Alert:
    alert = await store.get_alert(alert_id)
    if alert is None:
        raise NotFound("alert not found")
    if not caller.is_admin and (await directory.get_device(caller.token, alert.device_id)) is None:
        raise NotFound("alert not found")
    return alert


@router.get("/{alert_id}", response_model=AlertPublic)
async def get_alert(
    alert_id: AlertId, caller: CurrentUser, store: StoreDep, directory: DirectoryDep
) -> AlertPublic:
    return public(await _visible_alert(store, directory, caller, alert_id))


async def _transition(
    store: MonitoringStore,
    directory: DeviceDirectory,
    publisher: PublisherDep,
    caller: Caller,
    alert_id: str,
    status: str,
) -> AlertPublic:
    alert = await _visible_alert(store, directory, caller, alert_id)
    if alert.status == status:
        # Repeating an ack or clear changes nothing; announcing again is harmless and lets a
        # client retry after a 503 that stored the change but could not produce it.
        await publisher.publish(alert)
        return public(alert)
    if alert.status == AlertStatus.CLEARED:
        raise Conflict("alert is already cleared")
    try:
        new = await store.transition_alert(
            alert_id, status=status, by=caller.user_id, at=time.time()
        )
    except AlertTransitionError as exc:
        raise Conflict(f"alert cannot go from {alert.status} to {status}") from exc
    if new is None:
        raise NotFound("alert not found")
    if new.owner_id is None and alert.owner_id is not None:
        new = msgspec.structs.replace(new, owner_id=alert.owner_id)
    await publisher.publish(new)
    return public(new)


@router.post("/{alert_id}/ack", response_model=AlertPublic)
async def acknowledge(
    alert_id: AlertId,
    caller: WriterUser,
    store: StoreDep,
    directory: DirectoryDep,
    publisher: PublisherDep,
) -> AlertPublic:
    """Acknowledge an active alert (stays acknowledged while its condition holds)."""
    return await _transition(
        store, directory, publisher, caller, alert_id, AlertStatus.ACKNOWLEDGED
    )


@router.post("/{alert_id}/clear", response_model=AlertPublic)
async def clear(
    alert_id: AlertId,
    caller: WriterUser,
    store: StoreDep,
    directory: DirectoryDep,
    publisher: PublisherDep,
) -> AlertPublic:
    """Clear an alert; if its condition still holds the agents open a new one."""
    return await _transition(store, directory, publisher, caller, alert_id, AlertStatus.CLEARED)
