"""Service-to-service calls: the ingest path's device lookup, and device configuration.

The ingest bridge authenticates devices (their token) and forwards what they ask about their
configuration here: ``GET …/config`` (the desired configuration, with an ``ETag`` so a device
that already has it gets a 304) and ``PUT …/config/reported`` (the version it applied).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Response

from device_management import devices_service as svc
from device_management.api.deps import CacheDep, ReadSessionDep, SessionDep, SettingsDep
from device_management.models import Device
from device_management.schemas import ConfigStatus, ErrorBody, InternalDevice
from iot_common.device_config import ConfigReport, DesiredConfig, DeviceConfig, config_etag
from iot_common.errors import NotFound, Unauthorized


def _internal_caller(
    settings: SettingsDep,
    x_internal_token: Annotated[str | None, Header(description="Shared service secret")] = None,
) -> None:
    expected = settings.internal_token.get_secret_value().encode()
    if x_internal_token is None or not secrets.compare_digest(
        x_internal_token.encode("utf-8", "surrogateescape"), expected
    ):
        raise Unauthorized("missing or wrong internal token", headers={})


router = APIRouter(
    prefix="/internal",
    tags=["internal"],
    dependencies=[Depends(_internal_caller)],
    responses={
        401: {"model": ErrorBody, "description": "Missing or wrong X-Internal-Token"},
        404: {"model": ErrorBody, "description": "No such device"},
    },
)

AnyDeviceId = Annotated[
    str,
    Path(
        description="Device id. The ingest path asks about whatever ids devices send, so "
        "anything that is not a registered device's UUID is a 404 (never a 422).",
    ),
]


def _parse(device_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(device_id)
    except ValueError:
        raise NotFound("device not found") from None


@router.get("/devices/{device_id}")
async def lookup_device(
    device_id: AnyDeviceId, session: ReadSessionDep, cache: CacheDep
) -> InternalDevice:
    """What the ingest path needs about a device; also refills its cache entry."""
    parsed = _parse(device_id)
    device = await svc.find_device(session, parsed)
    if device is None:
        await cache.store_missing(parsed)
        raise NotFound("device not found")
    await cache.store(device)
    return InternalDevice(
        id=device.id,
        active=device.active,
        owner_id=device.owner_id,
        token_hash=device.token_hash or "",
        config_version=device.config_version,
        type=device.type,
    )


def desired_config(device: Device) -> DesiredConfig:
    return DesiredConfig(
        device_id=str(device.id),
        version=device.config_version,
        config=DeviceConfig.model_validate(device.config),
    )


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: ``*`` or a list of (possibly weak) tags, compared weakly."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/devices/{device_id}/config",
    response_model=DesiredConfig,
    responses={304: {"description": "The device already has this version (If-None-Match)"}},
)
async def device_config(
    device_id: AnyDeviceId,
    session: ReadSessionDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The device's desired configuration, ``ETag`` = its version."""
    device = await svc.find_device(session, _parse(device_id))
    if device is None:
        raise NotFound("device not found")
    etag = config_etag(device.config_version)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    body = desired_config(device).model_dump_json()
    return Response(body, media_type="application/json", headers=headers)


@router.put(
    "/devices/{device_id}/config/reported",
    responses={
        400: {"model": ErrorBody, "description": "Malformed JSON body"},
        409: {"model": ErrorBody, "description": "A version newer than the desired one"},
    },
)
async def report_config(
    device_id: AnyDeviceId, body: ConfigReport, session: SessionDep
) -> ConfigStatus:
    """Record the config version the device applied; answers where it stands."""
    async with session.begin():
        device = await svc.report_config(session, _parse(device_id), body.version)
    return svc.config_status(device)
