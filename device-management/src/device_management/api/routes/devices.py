"""The device API for users: registry, status, events and credentials."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import AfterValidator

from device_management import devices_service as svc
from device_management.api.deps import (
    AccountsDep,
    CacheDep,
    CurrentUser,
    ReadSessionDep,
    RelayDep,
    SessionDep,
    SettingsDep,
    WriterUser,
)
from device_management.cache import DeviceCache
from device_management.config import DeviceManagementSettings
from device_management.models import Device, DeviceEventRecord
from device_management.outbox import OutboxRelay
from device_management.schemas import (
    DEVICE_TYPE_PATTERN,
    MAX_NAME_LENGTH,
    CustomEventCreate,
    DeviceCreate,
    DeviceCredentials,
    DeviceList,
    DevicePublic,
    DeviceStatus,
    DeviceUpdate,
    ErrorBody,
    EventList,
    EventPublic,
    StatusPublic,
    printable,
)
from device_management.status import derive_status
from iot_common.device_config import DeviceConfig

router = APIRouter(
    prefix="/devices",
    tags=["devices"],
    responses={
        401: {"model": ErrorBody, "description": "Missing, invalid, expired or revoked token"},
        422: {"model": ErrorBody, "description": "Invalid input; details name the fields"},
    },
)

DeviceId = Annotated[uuid.UUID, Path(description="Device id (UUID); malformed ids are a 422.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size (1–500).")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip (≤ 1,000,000).")]

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such device, or not yours"}
}
_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed JSON body"},
    413: {"model": ErrorBody, "description": "Body over the size limit (256 KiB)"},
}
_WRITE: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "Viewers have read-only access"},
    404: {"model": ErrorBody, "description": "No such device, or not yours"},
}


def to_public(
    device: Device, last_seen: float | None, settings: DeviceManagementSettings
) -> DevicePublic:
    status, seen = derive_status(last_seen, offline_after=settings.offline_after_seconds)
    return DevicePublic(
        id=device.id,
        name=device.name,
        type=device.type,
        config=DeviceConfig.model_validate(device.config),
        active=device.active,
        status=status,
        last_seen=seen,
        owner_id=device.owner_id,
        config_version=device.config_version,
        config_status=svc.config_status(device),
        has_credentials=device.token_hash is not None,
        created_at=device.created_at,
        updated_at=device.updated_at,
    )


def event_public(record: DeviceEventRecord) -> EventPublic:
    return EventPublic(
        id=record.id,
        device_id=record.device_id,
        event_type=record.event_type,
        payload=record.payload,
        timestamp=record.timestamp,
    )


async def _changed(device: Device, cache: DeviceCache, relay: OutboxRelay | None) -> None:
    """After a commit: refresh the ingest cache and let the relay publish the event now."""
    await cache.store(device)
    if relay is not None:
        relay.wake()


# "/devices" and "/devices/" both work (no redirect: clients need not follow one for a POST).
@router.post("", status_code=201, include_in_schema=False)
@router.post(
    "/",
    status_code=201,
    responses={
        **_BODY,
        403: {"model": ErrorBody, "description": "Viewers have read-only access"},
        409: {"model": ErrorBody, "description": "Duplicate name"},
    },
)
async def register_device(
    body: DeviceCreate,
    session: SessionDep,
    user: WriterUser,
    cache: CacheDep,
    relay: RelayDep,
    settings: SettingsDep,
) -> DevicePublic:
    """Register a device owned by the caller (admins may name another owner)."""
    async with session.begin():
        device = await svc.create_device(session, user, body)
    await _changed(device, cache, relay)
    return to_public(device, None, settings)


@router.get("", include_in_schema=False)
@router.get("/")
async def list_devices(
    session: SessionDep,
    user: CurrentUser,
    cache: CacheDep,
    settings: SettingsDep,
    type: Annotated[
        str | None, Query(pattern=DEVICE_TYPE_PATTERN, max_length=64, description="Exact type.")
    ] = None,
    status: Annotated[DeviceStatus | None, Query(description="Derived status.")] = None,
    name_prefix: Annotated[
        str | None,
        Query(max_length=MAX_NAME_LENGTH, description="Names starting with this."),
        AfterValidator(printable),
    ] = None,
    owner_id: Annotated[
        uuid.UUID | None, Query(description="Only this owner's devices (admins).")
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> DeviceList:
    """The caller's devices (all devices for admins), oldest first."""
    stmt = svc.device_query(user, device_type=type, name_prefix=name_prefix, owner_id=owner_id)
    if status is None:
        total = await svc.count(session, stmt)
        devices = list((await session.execute(stmt.limit(limit).offset(offset))).scalars())
        seen = await cache.last_seen_many([d.id for d in devices])
        items = [to_public(d, s, settings) for d, s in zip(devices, seen, strict=True)]
        return DeviceList(items=items, total=total, limit=limit, offset=offset)
    # Status lives in Redis, so this filter walks the matching devices in chunks.
    items, total, chunk, start = [], 0, 1000, 0
    while True:
        devices = list((await session.execute(stmt.limit(chunk).offset(start))).scalars())
        seen = await cache.last_seen_many([d.id for d in devices])
        for device, last in zip(devices, seen, strict=True):
            derived, _ = derive_status(last, offline_after=settings.offline_after_seconds)
            if derived is status:
                if offset <= total < offset + limit:
                    items.append(to_public(device, last, settings))
                total += 1
        if len(devices) < chunk:
            break
        start += chunk
    return DeviceList(items=items, total=total, limit=limit, offset=offset)


@router.get("/{device_id}", responses=_NOT_FOUND)
async def get_device(
    device_id: DeviceId,
    session: ReadSessionDep,
    user: CurrentUser,
    cache: CacheDep,
    settings: SettingsDep,
) -> DevicePublic:
    """One device (200 means the caller may see it)."""
    device = await svc.get_device(session, user, device_id)
    last_seen = await cache.lookup_and_store(device)
    return to_public(device, last_seen, settings)


@router.put(
    "/{device_id}",
    responses={**_BODY, **_WRITE, 409: {"model": ErrorBody, "description": "Duplicate name"}},
)
async def update_device(
    device_id: DeviceId,
    body: DeviceUpdate,
    session: SessionDep,
    user: WriterUser,
    cache: CacheDep,
    relay: RelayDep,
    accounts: AccountsDep,
    settings: SettingsDep,
) -> DevicePublic:
    """Change the given fields; omitted fields keep their value. Deactivating a device also
    disables its MQTT/AMQP accounts (and disconnects it)."""
    async with session.begin():
        device, changed = await svc.update_device(session, user, device_id, body, accounts=accounts)
    if changed:
        await _changed(device, cache, relay)
        accounts.wake()
        if body.active is not None:
            await accounts.wait_applied(device.id, within=settings.credential_wait_seconds)
    return to_public(device, await cache.last_seen(device.id), settings)


@router.delete("/{device_id}", status_code=204, responses=_WRITE)
async def delete_device(
    device_id: DeviceId,
    session: SessionDep,
    user: WriterUser,
    cache: CacheDep,
    relay: RelayDep,
    accounts: AccountsDep,
    settings: SettingsDep,
) -> Response:
    """Delete the device; its token stops working at once, and a connected device is
    disconnected from MQTT and AMQP."""
    async with session.begin():
        await svc.delete_device(session, user, device_id, accounts=accounts)
    accounts.wake()
    await accounts.wait_applied(device_id, within=settings.credential_wait_seconds)
    await cache.store_missing(device_id, deleted=True)
    await cache.forget_last_seen(device_id)
    if relay is not None:
        relay.wake()
    return Response(status_code=204)


@router.get("/{device_id}/status", responses=_NOT_FOUND)
async def device_status(
    device_id: DeviceId,
    session: ReadSessionDep,
    user: CurrentUser,
    cache: CacheDep,
    settings: SettingsDep,
) -> StatusPublic:
    """online / offline / never_seen and the last time the ingest bridge saw the device."""
    device = await svc.get_device(session, user, device_id)
    status, seen = derive_status(
        await cache.last_seen(device.id), offline_after=settings.offline_after_seconds
    )
    return StatusPublic(
        device_id=device.id,
        status=status,
        last_seen=seen,
        offline_after_seconds=settings.offline_after_seconds,
    )


@router.post("/{device_id}/events", status_code=201, responses={**_BODY, **_WRITE})
async def publish_event(
    device_id: DeviceId,
    body: CustomEventCreate,
    session: SessionDep,
    user: WriterUser,
    relay: RelayDep,
) -> EventPublic:
    """Record a custom event and publish it as ``device.event.<type>``."""
    async with session.begin():
        record = await svc.add_custom_event(session, user, device_id, body)
    if relay is not None:
        relay.wake()
    return event_public(record)


@router.get("/{device_id}/events", responses=_NOT_FOUND)
async def device_events(
    device_id: DeviceId,
    session: SessionDep,
    user: CurrentUser,
    event_type: Annotated[
        str | None,
        Query(
            max_length=128,
            description="Only this type, e.g. device.updated or device.event.door_opened.",
        ),
        AfterValidator(printable),
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> EventList:
    """The device's history (lifecycle changes and custom events), newest first."""
    records, total = await svc.list_events(
        session, user, device_id, event_type=event_type, limit=limit, offset=offset
    )
    return EventList(
        items=[event_public(r) for r in records], total=total, limit=limit, offset=offset
    )


@router.post("/{device_id}/credentials", status_code=201, responses=_WRITE)
async def rotate_credentials(
    device_id: DeviceId,
    session: SessionDep,
    user: WriterUser,
    cache: CacheDep,
    relay: RelayDep,
    accounts: AccountsDep,
    settings: SettingsDep,
) -> DeviceCredentials:
    """Issue (or rotate) the device token: the device's password on HTTP, MQTT and AMQP. It
    is returned once and only its hash is kept; the previous token stops working and a
    device connected with it is disconnected."""
    async with session.begin():
        device, token = await svc.rotate_credentials(session, user, device_id, accounts=accounts)
    await _changed(device, cache, relay)
    accounts.wake()
    provisioned = await accounts.wait_applied(device.id, within=settings.credential_wait_seconds)
    assert device.credentials_rotated_at is not None
    return DeviceCredentials(
        device_id=device.id,
        token=token,
        rotated_at=device.credentials_rotated_at,
        provisioned=provisioned,
    )
