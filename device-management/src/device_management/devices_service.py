"""Device operations: ownership rules, the change and its event committed together."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from device_management import events
from device_management.broker_accounts import ACTIVE, CONFIG, CREDENTIAL, DELETE, BrokerAccounts
from device_management.models import Device, DeviceEventRecord
from device_management.schemas import ConfigStatus, CustomEventCreate, DeviceCreate, DeviceUpdate
from iot_common.auth import Principal
from iot_common.errors import Conflict, Forbidden, NotFound


def user_uuid(principal: Principal) -> uuid.UUID:
    return uuid.UUID(principal.user_id)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _visible(stmt: Select[Any], principal: Principal) -> Select[Any]:
    if principal.is_admin:
        return stmt
    return stmt.where(Device.owner_id == user_uuid(principal))


def _next_updated_at(device: Device) -> datetime:
    # Strictly increasing: the cache's compare-and-set orders writes by this stamp.
    return max(datetime.now(UTC), device.updated_at + timedelta(microseconds=1))


def _duplicate(name: str) -> Conflict:
    return Conflict(
        f"a device named {name!r} already exists for this owner",
        details=[{"field": "body.name", "message": "duplicate name", "type": "duplicate"}],
    )


async def get_device(
    session: AsyncSession, principal: Principal, device_id: uuid.UUID, *, lock: bool = False
) -> Device:
    """The device if the caller may see it; another owner's device is as absent as a missing one."""
    stmt = _visible(select(Device).where(Device.id == device_id), principal)
    if lock:
        stmt = stmt.with_for_update()
    device: Device | None = (await session.execute(stmt)).scalar_one_or_none()
    if device is None:
        raise NotFound("device not found")
    return device


async def find_device(session: AsyncSession, device_id: uuid.UUID) -> Device | None:
    return await session.get(Device, device_id)


async def create_device(session: AsyncSession, principal: Principal, data: DeviceCreate) -> Device:
    owner = user_uuid(principal)
    if data.owner_id is not None and data.owner_id != owner:
        if not principal.is_admin:
            raise Forbidden("only admins may create devices for another owner")
        owner = data.owner_id
    now = datetime.now(UTC)
    device = Device(
        id=uuid.uuid4(),
        owner_id=owner,
        name=data.name,
        type=data.type,
        config=data.config.model_dump(mode="json"),
        active=data.active,
        config_version=1,
        token_hash=None,
        credentials_rotated_at=None,
        created_at=now,
        updated_at=now,
    )
    session.add(device)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise _duplicate(data.name) from exc
    events.record_event(session, device, events.CREATED, at=now)
    return device


async def update_device(
    session: AsyncSession,
    principal: Principal,
    device_id: uuid.UUID,
    data: DeviceUpdate,
    *,
    accounts: BrokerAccounts,
) -> tuple[Device, bool]:
    """Apply the given fields; returns the device and whether anything changed."""
    device = await get_device(session, principal, device_id, lock=True)
    changed = False
    if data.name is not None and data.name != device.name:
        device.name = data.name
        changed = True
    if data.type is not None and data.type != device.type:
        device.type = data.type
        changed = True
    if data.active is not None and data.active != device.active:
        device.active = data.active
        changed = True
        if device.token_hash is not None:  # no broker account before the first token
            accounts.record(session, device, ACTIVE)
    if data.config is not None:
        config = data.config.model_dump(mode="json")
        if config != device.config:
            device.config = config
            device.config_version += 1
            changed = True
            if device.token_hash is not None:  # else published with its first token
                accounts.record(session, device, CONFIG)
    if not changed:
        return device, False
    device.updated_at = _next_updated_at(device)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise _duplicate(data.name or "") from exc
    events.record_event(session, device, events.UPDATED, at=device.updated_at)
    return device, True


async def delete_device(
    session: AsyncSession, principal: Principal, device_id: uuid.UUID, *, accounts: BrokerAccounts
) -> Device:
    device = await get_device(session, principal, device_id, lock=True)
    events.record_event(session, device, events.DELETED)
    if device.token_hash is not None:
        accounts.record(session, device, DELETE)
    await session.delete(device)
    await session.flush()
    return device


async def rotate_credentials(
    session: AsyncSession, principal: Principal, device_id: uuid.UUID, *, accounts: BrokerAccounts
) -> tuple[Device, str]:
    """Issue a new device token (the old one stops working on every transport); returns it once."""
    device = await get_device(session, principal, device_id, lock=True)
    token = secrets.token_urlsafe(32)
    device.token_hash = hash_token(token)
    device.updated_at = _next_updated_at(device)
    device.credentials_rotated_at = device.updated_at
    await session.flush()
    events.record_event(session, device, events.CREDENTIALS_ROTATED, at=device.updated_at)
    accounts.record(session, device, CREDENTIAL, token=token)
    accounts.record(session, device, CONFIG)
    return device, token


def config_status(device: Device) -> ConfigStatus:
    """Desired against reported configuration version."""
    return ConfigStatus(
        desired_version=device.config_version,
        reported_version=device.config_reported_version,
        reported_at=device.config_reported_at,
        in_sync=device.config_reported_version == device.config_version,
    )


async def report_config(session: AsyncSession, device_id: uuid.UUID, version: int) -> Device:
    """Record that the device applied config ``version`` (the device itself reports it)."""
    # The row lock orders the report against a config change committing at the same time.
    device = await session.get(Device, device_id, with_for_update=True)
    if device is None:
        raise NotFound("device not found")
    if version > device.config_version:
        raise Conflict(
            f"config version {version} does not exist: the desired configuration is version "
            f"{device.config_version}",
            details=[{"field": "body.version", "message": "newer than the desired version"}],
        )
    device.config_reported_version = version
    device.config_reported_at = datetime.now(UTC)
    await session.flush()
    return device


async def add_custom_event(
    session: AsyncSession, principal: Principal, device_id: uuid.UUID, data: CustomEventCreate
) -> DeviceEventRecord:
    # The row lock keeps this device's events in commit order in the outbox.
    device = await get_device(session, principal, device_id, lock=True)
    return events.record_event(session, device, data.routing_type, payload=data.payload)


async def list_events(
    session: AsyncSession,
    principal: Principal,
    device_id: uuid.UUID,
    *,
    event_type: str | None,
    limit: int,
    offset: int,
) -> tuple[list[DeviceEventRecord], int]:
    await get_device(session, principal, device_id)
    cond = [DeviceEventRecord.device_id == device_id]
    if event_type is not None:
        cond.append(DeviceEventRecord.event_type == event_type)
    total = (
        await session.execute(select(func.count()).select_from(DeviceEventRecord).where(*cond))
    ).scalar_one()
    rows = (
        (
            await session.execute(
                select(DeviceEventRecord)
                .where(*cond)
                .order_by(DeviceEventRecord.timestamp.desc(), DeviceEventRecord.id)
                .limit(limit)
                .offset(offset)
            )
        )
        .scalars()
        .all()
    )
    return list(rows), total


def device_query(
    principal: Principal,
    *,
    device_type: str | None,
    name_prefix: str | None,
    owner_id: uuid.UUID | None,
) -> Select[Any]:
    stmt = _visible(select(Device), principal)
    if owner_id is not None:
        stmt = stmt.where(Device.owner_id == owner_id)
    if device_type is not None:
        stmt = stmt.where(Device.type == device_type)
    if name_prefix:
        stmt = stmt.where(Device.name.startswith(name_prefix, autoescape=True))
    return stmt.order_by(Device.created_at, Device.id)


async def count(session: AsyncSession, stmt: Select[Any]) -> int:
    sub = stmt.order_by(None).subquery()
    return (await session.execute(select(func.count()).select_from(sub))).scalar_one()
