"""What the dashboard needs from the other services, reached through this API.

The dashboard is served from this service; relaying sign-in and the device list keeps it on one
origin (no CORS set-up on signing or device-management) without this API holding any secret:
it forwards the user's credentials to signing and the user's token to device-management.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from monitoring_api import session_service
from monitoring_api.api.deps import CurrentUser, DirectoryDep, SigningHttpDep
from monitoring_api.proxies import forwarded_chain
from monitoring_api.schemas import SessionCreate

router = APIRouter(prefix="/monitoring", tags=["session"])


@router.post("/session")
async def sign_in(body: SessionCreate, request: Request, http: SigningHttpDep) -> dict[str, Any]:
    """Sign in with email and password (relayed to signing ``POST /users/auth``)."""
    return await session_service.sign_in(
        http=http, body=body, forwarded_for=forwarded_chain(request)
    )


@router.get("/devices")
async def my_devices(caller: CurrentUser, directory: DirectoryDep) -> list[dict[str, Any]]:
    """The caller's devices with their status, as device-management lists them."""
    devices = await directory.list_devices(caller.token)
    keys = ("id", "name", "type", "status", "last_seen", "active", "owner_id", "config")
    return [{k: d.get(k) for k in keys} for d in devices]
