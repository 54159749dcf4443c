"""What the dashboard needs from the other services, reached through this API.

The dashboard is served from this service; relaying sign-in and the device list keeps it on one
origin (no CORS set-up on signing or device-management) without this API holding any secret:
it forwards the user's credentials to signing and the user's token to device-management.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request

from iot_common.device_config import MAX_DEVICE_REQUEST_BYTES
from monitoring_api import session_service
from monitoring_api.api.deps import (
    CurrentUser,
    DirectoryDep,
    SigningHttpDep,
    visible_device,
)
from monitoring_api.devices import DeviceInfo
from monitoring_api.proxies import forwarded_chain
from monitoring_api.schemas import SessionCreate

router = APIRouter(prefix="/monitoring", tags=["session"])

DeviceId = Annotated[uuid.UUID, Path()]

#: A config edit goes on to device-management as its own text inside this envelope, so the
#: relay accepts exactly what device-management's body limit lets through (a larger limit than
#: the rest of this API's: a config with its settings can be larger than 64 KiB).
CONFIG_ENVELOPE = (b'{"config":', b"}")
CONFIG_RELAY_MAX_BYTES = MAX_DEVICE_REQUEST_BYTES - sum(map(len, CONFIG_ENVELOPE))
#: ``iot_common.web.BodyLimit``'s path of the relay (``main`` installs the limit).
CONFIG_RELAY_PATH = r"/monitoring/devices/[^/]+/config"

#: What the dashboard shows of a device (device-management's ``DevicePublic`` minus dates).
DEVICE_KEYS = (
    "id",
    "name",
    "type",
    "status",
    "last_seen",
    "active",
    "owner_id",
    "config",
    "config_version",
    "config_status",
    "has_credentials",
)


def shown_device(device: DeviceInfo) -> dict[str, Any]:
    return {k: device.get(k) for k in DEVICE_KEYS}


@router.post("/session")
async def sign_in(body: SessionCreate, request: Request, http: SigningHttpDep) -> dict[str, Any]:
    """Sign in with email and password (relayed to signing ``POST /users/auth``)."""
    return await session_service.sign_in(
        http=http, body=body, forwarded_for=forwarded_chain(request)
    )


@router.get("/devices")
async def my_devices(caller: CurrentUser, directory: DirectoryDep) -> list[dict[str, Any]]:
    """The caller's devices with their status, as device-management lists them."""
    return [shown_device(d) for d in await directory.list_devices(caller.token)]


@router.get("/devices/{device_id}")
async def my_device(
    device_id: DeviceId, caller: CurrentUser, directory: DirectoryDep
) -> dict[str, Any]:
    """One of the caller's devices: status, config and its desired/reported versions."""
    return shown_device(await visible_device(directory, caller, str(device_id)))


@router.put(
    "/devices/{device_id}/config",
    responses={413: {"description": f"body over {CONFIG_RELAY_MAX_BYTES} bytes"}},
)
async def set_device_config(
    device_id: DeviceId,
    config: Annotated[
        dict[str, Any],
        Body(description=f"settings, metrics and rules (at most {CONFIG_RELAY_MAX_BYTES} bytes)"),
    ],
    request: Request,
    caller: CurrentUser,
    directory: DirectoryDep,
) -> dict[str, Any]:
    """Replace the device's configuration (relayed to device-management ``PUT /devices/{id}``
    with the caller's token); a refusal's details name the field (``body.config.rules.0…``)."""
    # The text as it came (already parsed as an object above), not a re-encoding that could
    # be longer than device-management's limit.
    prefix, suffix = CONFIG_ENVELOPE
    device = await directory.change_device(
        caller.token,
        str(device_id),
        method="PUT",
        content=prefix + await request.body() + suffix,
    )
    return shown_device(device)


@router.post("/devices/{device_id}/credentials", status_code=201)
async def rotate_device_credentials(
    device_id: DeviceId, caller: CurrentUser, directory: DirectoryDep
) -> dict[str, Any]:
    """Issue a new device token (relayed to device-management); shown in this answer only."""
    return await directory.change_device(
        caller.token, str(device_id), method="POST", path="/credentials"
    )
