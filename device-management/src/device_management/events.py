"""Recording device events: history row and outbox row in the caller's transaction."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from device_management.models import Device, DeviceEventRecord, OutboxMessage
from iot_common.events import DeviceEvent, json_encoder

CREATED = "device.created"
UPDATED = "device.updated"
DELETED = "device.deleted"
CREDENTIALS_ROTATED = "device.credentials_rotated"
CUSTOM_PREFIX = "device.event."


def device_snapshot(device: Device) -> dict[str, Any]:
    """The device as lifecycle events carry it (never its token hash)."""
    return {
        "id": str(device.id),
        "name": device.name,
        "type": device.type,
        "config": device.config,
        "active": device.active,
        "owner_id": str(device.owner_id),
        "config_version": device.config_version,
        "created_at": device.created_at.isoformat(),
        "updated_at": device.updated_at.isoformat(),
    }


def record_event(
    session: AsyncSession,
    device: Device,
    event_type: str,
    *,
    payload: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> DeviceEventRecord:
    """Add the event to the device's history and to the outbox; commits with the caller."""
    event_id = uuid.uuid4()
    at = at or datetime.now(UTC)
    lifecycle = not event_type.startswith(CUSTOM_PREFIX)
    snapshot = device_snapshot(device) if lifecycle else None
    message = DeviceEvent(
        event_id=str(event_id),
        event_type=event_type,
        device_id=str(device.id),
        timestamp=at.timestamp(),
        owner_id=str(device.owner_id),
        device=snapshot,
        payload=None if lifecycle else (payload or {}),
    )
    record = DeviceEventRecord(
        id=event_id,
        device_id=device.id,
        owner_id=device.owner_id,
        event_type=event_type,
        payload=snapshot if snapshot is not None else (payload or {}),
        timestamp=at,
    )
    session.add(record)
    session.add(
        OutboxMessage(
            event_id=event_id,
            device_id=device.id,
            routing_key=event_type,
            body=json_encoder.encode(message),
            created_at=at,
            sent_at=None,
            attempts=0,
        )
    )
    return record
