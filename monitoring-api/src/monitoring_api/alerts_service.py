"""Alerts of the caller's devices: list, show, acknowledge, clear."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

import msgspec

from iot_common.errors import NotFound
from iot_common.events import Alert
from monitoring_api.devices import DeviceDirectory
from monitoring_api.errors import AlertTransitionRefused
from monitoring_api.publisher import AlertPublisher
from monitoring_api.schemas import AlertList, AlertPublic
from monitoring_api.timeutil import resolve_range
from monitoring_store import AlertTransitionError
from monitoring_store.base import MonitoringStore


def public(alert: Alert) -> AlertPublic:
    return AlertPublic(**msgspec.structs.asdict(alert))


async def list_alerts(
    *,
    store: MonitoringStore,
    device_ids: Sequence[str] | None,
    status: str | None,
    min_severity: str | None,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    offset: int,
) -> AlertList:
    """Alerts newest first over ``device_ids`` (None: every device; []: none)."""
    start_ts = end_ts = None
    if start is not None or end is not None:
        start_ts, end_ts = resolve_range(start, end, default_span=time.time(), max_span=None)
    if device_ids is not None and not device_ids:
        return AlertList(items=[], limit=limit, offset=offset, next_offset=None)
    alerts = await store.query_alerts(
        device_ids=device_ids,
        status=status,
        min_severity=min_severity,
        start=start_ts,
        end=end_ts,
        limit=limit,
        offset=offset,
    )
    next_offset = offset + len(alerts) if len(alerts) == limit else None
    return AlertList(
        items=[public(a) for a in alerts], limit=limit, offset=offset, next_offset=next_offset
    )


async def visible_alert(
    *, store: MonitoringStore, directory: DeviceDirectory, token: str, is_admin: bool, alert_id: str
) -> Alert:
    """The alert if the caller may see its device; 404 otherwise (as for devices)."""
    alert = await store.get_alert(alert_id)
    if alert is None:
        raise NotFound("alert not found")
    if not is_admin and (await directory.get_device(token, alert.device_id)) is None:
        raise NotFound("alert not found")
    return alert


async def transition(
    *,
    store: MonitoringStore,
    publisher: AlertPublisher,
    alert: Alert,
    status: str,
    by: str,
) -> AlertPublic:
    """Move a visible alert to ``status`` and announce the result on the alerts topic.

    The store decides what may move where (and answers an unchanged alert for a repeated ack
    or clear). Announcing an unchanged alert again is harmless and lets a client retry after
    a 503 that stored the change but could not produce it.
    """
    try:
        new = await store.transition_alert(alert.alert_id, status=status, by=by, at=time.time())
    except AlertTransitionError as exc:
        raise AlertTransitionRefused(f"alert is already {exc.current.status}") from exc
    if new is None:
        raise NotFound("alert not found")
    if new.owner_id is None and alert.owner_id is not None:
        new = msgspec.structs.replace(new, owner_id=alert.owner_id)
    await publisher.publish(new)
    return public(new)
