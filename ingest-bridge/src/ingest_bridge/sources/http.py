"""HTTP source: ``POST /ingest/{device_id}`` (device token auth, 202 after Kafka) and probes."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from ingest_bridge import metrics
from ingest_bridge.bridge import Bridge
from ingest_bridge.devices import DeviceLookupUnavailable
from ingest_bridge.pipeline import Inbound
from iot_common.auth import bearer_token
from iot_common.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from iot_common.telemetry import DeadLetterReason as R

SOURCE = "http"

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
        if info.exists and not info.token_matches(token):
            raise Unauthorized("invalid device token")
        body = await request.body()
        # Unknown and deactivated devices are dead-lettered by the pipeline like on any source.
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
    if not info.exists:
        raise Unauthorized("unknown device or invalid device token")
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
