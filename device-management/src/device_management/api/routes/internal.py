"""Service-to-service lookup: the ingest path's cache-miss fallback."""

from __future__ import annotations

import secrets
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path

from device_management import devices_service as svc
from device_management.api.deps import CacheDep, ReadSessionDep, SettingsDep
from device_management.schemas import ErrorBody, InternalDevice
from iot_common.errors import NotFound, Unauthorized

router = APIRouter(prefix="/internal", tags=["internal"])


@router.get(
    "/devices/{device_id}",
    responses={
        401: {"model": ErrorBody, "description": "Missing or wrong X-Internal-Token"},
        404: {"model": ErrorBody, "description": "No such device"},
    },
)
async def lookup_device(
    device_id: Annotated[
        str,
        Path(
            description="Device id. The ingest path asks about whatever ids devices send, so "
            "anything that is not a registered device's UUID is a 404 (never a 422).",
        ),
    ],
    session: ReadSessionDep,
    cache: CacheDep,
    settings: SettingsDep,
    x_internal_token: Annotated[str | None, Header(description="Shared service secret")] = None,
) -> InternalDevice:
    """What the ingest path needs about a device; also refills its cache entry."""
    expected = settings.internal_token.get_secret_value().encode()
    if x_internal_token is None or not secrets.compare_digest(
        x_internal_token.encode("utf-8", "surrogateescape"), expected
    ):
        raise Unauthorized("missing or wrong internal token", headers={})
    try:
        parsed = uuid.UUID(device_id)
    except ValueError:
        raise NotFound("device not found") from None
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
