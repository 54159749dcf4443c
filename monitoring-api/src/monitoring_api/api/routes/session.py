"""What the dashboard needs from the other services, reached through this API.

The dashboard is served from this service; relaying sign-in and the device list keeps it on one
origin (no CORS set-up on signing or device-management) without this API holding any secret:
it forwards the user's credentials to signing and the user's token to device-management.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from iot_common.errors import ServiceUnavailable, TooManyRequests, Unauthorized
from monitoring_api.api.deps import CurrentUser, DirectoryDep
from monitoring_api.schemas import SessionCreate

router = APIRouter(prefix="/monitoring", tags=["session"])


@router.post("/session")
async def sign_in(body: SessionCreate, request: Request) -> JSONResponse:
    """Sign in with email and password (relayed to signing ``POST /users/auth``)."""
    http: httpx.AsyncClient = request.app.state.signing_http
    try:
        resp = await http.post("/users/auth", json=body.model_dump())
    except httpx.HTTPError as exc:
        raise ServiceUnavailable("signing is unreachable") from exc
    if resp.status_code in (400, 401, 403, 404, 422):
        raise Unauthorized("wrong email or password")
    if resp.status_code == 429:
        raw = resp.headers.get("retry-after", "")
        retry_after = int(raw) if raw.isdigit() else 60
        raise TooManyRequests("too many sign-in attempts", retry_after=retry_after)
    if resp.status_code != 200:
        raise ServiceUnavailable("signing did not answer")
    return JSONResponse(resp.json())


@router.get("/devices")
async def my_devices(caller: CurrentUser, directory: DirectoryDep) -> list[dict[str, Any]]:
    """The caller's devices with their status, as device-management lists them."""
    devices = await directory.list_devices(caller.token)
    keys = ("id", "name", "type", "status", "last_seen", "active", "owner_id", "config")
    return [{k: d.get(k) for k in keys} for d in devices]
