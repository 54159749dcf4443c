"""HTTP source: ``POST /ingest/{device_id}`` (device token auth, 202 after Kafka) and probes.

Also the device's side of its configuration over HTTP: ``GET /ingest/{id}/config`` (its desired
configuration; ``ETag`` = the version, ``If-None-Match`` answers 304) and
``PUT /ingest/{id}/config/reported`` (the version it applied), with the same token.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from ingest_bridge import metrics
from ingest_bridge.bridge import Bridge
from ingest_bridge.devices import DeviceInfo, DeviceLookupUnavailable
from ingest_bridge.pipeline import Inbound
from iot_common.auth import bearer_token
from iot_common.device_config import ConfigReport, DesiredConfig
from iot_common.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from iot_common.telemetry import DeadLetterReason as R

SOURCE = "http"
#: The one 401 answer for an unknown device and for a wrong token alike.
UNAUTHORIZED = "unknown device or invalid device token"

router = APIRouter()


def _bridge(request: Request) -> Bridge:
    bridge: Bridge = request.app.state.bridge
    return bridge


def _unavailable(message: str) -> ServiceUnavailable:
    return ServiceUnavailable(message, headers={"Retry-After": "1"})


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    ok, detail = await _bridge(request).health()
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "service": "ingest-bridge", **detail},
        status_code=200 if ok else 503,
    )


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    ok, detail = _bridge(request).ready()
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", **detail}, status_code=200 if ok else 503
    )


_WHOLE_ERRORS: dict[str, type[Any]] = {
    R.TOO_LARGE: PayloadTooLarge,
    R.NOT_JSON: BadRequest,
}


@router.post("/ingest/{device_id}", status_code=202)
async def ingest(
    device_id: str,
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Take one reading or an array of readings; 202 once Kafka has every valid one."""
    bridge = _bridge(request)
    settings = bridge.settings
    token = bearer_token(authorization)
    if bridge.http_in_flight >= settings.http_max_in_flight_requests:
        raise _unavailable("too many requests in flight")
    if not bridge.sink.ready:
        raise _unavailable("the bus is not acknowledging; retry shortly")
    bridge.http_in_flight += 1
    gauge = metrics.IN_FLIGHT.labels(SOURCE)
    gauge.set(bridge.http_in_flight)
    try:
        try:
            info = await bridge.devices.get(device_id)
        except DeviceLookupUnavailable as exc:
            raise _unavailable("device lookup unavailable") from exc
        # One answer for "no such device" and "wrong token", checked before anything is read
        # or dead-lettered: a stranger learns nothing about which device ids exist, and
        # cannot fill the dead-letter topic with unauthenticated bodies.
        if not info.token_matches(token):
            raise Unauthorized(UNAUTHORIZED)
        body = await request.body()
        # A deactivated device (authenticated) is dead-lettered by the pipeline like on any
        # source.
        submit = asyncio.ensure_future(bridge.pipeline.submit(SOURCE, [Inbound(device_id, body)]))
        try:
            # shield: a timed-out request still completes (and counts) in the background.
            results = await asyncio.wait_for(asyncio.shield(submit), settings.http_ack_timeout)
        except TimeoutError:
            raise _unavailable("the bus did not acknowledge in time; retry") from None
    finally:
        bridge.http_in_flight -= 1
        gauge.set(bridge.http_in_flight)
    res = results[0]
    if not info.active:
        raise Forbidden("device is deactivated")
    rejections = [{"index": r.index, "reason": r.reason, "detail": r.detail} for r in res.rejects]
    if res.whole or not res.readings:
        reason = res.rejects[0].reason if res.rejects else R.INVALID_SCHEMA
        error = _WHOLE_ERRORS.get(reason, ValidationFailed)
        raise error(
            f"no reading accepted ({reason})",
            details=[
                {"field": "body", "message": r["detail"], "type": r["reason"]}
                | ({"index": r["index"]} if r["index"] is not None else {})
                for r in rejections
            ],
        )
    return JSONResponse(
        {"accepted": len(res.readings), "rejected": len(res.rejects), "rejections": rejections},
        status_code=202,
    )


async def _authenticated(
    device_id: str,
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> DeviceInfo:
    """The device whose token this is, active; the same 401 for a stranger and a wrong token.

    A dependency, so it runs before the body is parsed: a stranger learns nothing from a 422.
    """
    bridge = _bridge(request)
    token = bearer_token(authorization)
    try:
        info = await bridge.devices.get(device_id)
    except DeviceLookupUnavailable as exc:
        raise _unavailable("device lookup unavailable") from exc
    if not info.token_matches(token):
        raise Unauthorized(UNAUTHORIZED)
    if not info.active:
        raise Forbidden("device is deactivated")
    return info


AuthenticatedDevice = Annotated[DeviceInfo, Depends(_authenticated)]

_DEVICE_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "Unknown device or wrong device token"},
    403: {"description": "The device is deactivated"},
    503: {"description": "device-management unreachable; retry (Retry-After)"},
}


@router.get(
    "/ingest/{device_id}/config",
    response_model=DesiredConfig,
    responses={
        200: {"description": "The desired configuration; ETag names its version"},
        304: {"description": "The device already has this version (If-None-Match)"},
        **_DEVICE_AUTH,
    },
)
async def desired_config(
    device_id: str,
    request: Request,
    _device: AuthenticatedDevice,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The device's desired configuration, with ``ETag``; 304 when it already has it."""
    bridge = _bridge(request)
    try:
        answer = await bridge.configs.desired(device_id, if_none_match=if_none_match)
    except DeviceLookupUnavailable as exc:
        raise _unavailable("device configuration unavailable") from exc
    if answer.status == 404:  # deleted since the cache entry was written
        raise Unauthorized(UNAUTHORIZED)
    if answer.status not in (200, 304):
        raise _unavailable(f"device-management answered {answer.status}")
    return Response(
        answer.body if answer.status == 200 else b"",
        status_code=answer.status,
        headers={k: v for k, v in answer.headers.items() if k.lower() != "content-type"},
        media_type="application/json" if answer.status == 200 else None,
    )


@router.put(
    "/ingest/{device_id}/config/reported",
    responses={
        200: {"description": "Recorded; where the device stands (desired/reported/in_sync)"},
        409: {"description": "A version newer than the desired one"},
        **_DEVICE_AUTH,
    },
)
async def report_config(
    device_id: str,
    body: ConfigReport,
    request: Request,
    _device: AuthenticatedDevice,
) -> JSONResponse:
    """Record the configuration version the device applied."""
    bridge = _bridge(request)
    try:
        answer = await bridge.configs.report(device_id, body.version)
    except DeviceLookupUnavailable as exc:
        raise _unavailable("device configuration unavailable") from exc
    if answer.status == 404:
        raise Unauthorized(UNAUTHORIZED)
    if answer.status == 409:
        error = answer.json().get("error", {})
        raise Conflict(
            error.get("message", "config version does not exist"), details=error.get("details")
        )
    if answer.status != 200:
        raise _unavailable(f"device-management answered {answer.status}")
    return JSONResponse(answer.json())
