"""FastAPI plumbing every HTTP service installs: request ids, body limit, errors, metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iot_common.errors import PlatformError, error_body
from iot_common.logging import request_id_var

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """A body limit of its own for the requests of one method whose path matches ``path``
    (a regular expression matched against the whole path), instead of the service's."""

    method: str
    path: str
    max_bytes: int

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.fullmatch(self.path, path) is not None


class RequestContextMiddleware:
    """Pure ASGI: request id in/out, body size limit (413), metrics per route."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        max_body_bytes: int,
        body_limits: Sequence[BodyLimit] = (),
    ) -> None:
        self.app = app
        self.service = service
        self.max_body = max_body_bytes
        self.body_limits = tuple(body_limits)

    def _limit(self, scope: Scope) -> int:
        method, path = scope.get("method", ""), scope.get("path", "")
        for limit in self.body_limits:
            if limit.matches(method, path):
                return limit.max_bytes
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        declared_len = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:128]
            elif name == b"content-length":
                try:
                    declared_len = int(value)
                except ValueError:
                    declared_len = None
        rid = rid or uuid.uuid4().hex
        max_body = self._limit(scope)
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status_holder = [500]
        started = [False]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
                status_holder[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if declared_len is not None and declared_len > max_body:
                await self._too_large(send_wrapper, rid, max_body)
                return
            received = 0
            exceeded = False

            async def limited_receive() -> Message:
                nonlocal received, exceeded
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > max_body:
                        exceeded = True
                        raise _BodyTooLarge
                return message

            async def app_send(message: Message) -> None:
                # FastAPI turns any error while reading the body into its own 400; once the
                # limit was hit, the app's response is dropped so the 413 below wins.
                if exceeded and not started[0]:
                    return
                await send_wrapper(message)

            try:
                await self.app(scope, limited_receive, app_send)
                if exceeded and not started[0]:
                    await self._too_large(send_wrapper, rid, max_body)
            except _BodyTooLarge:
                if not started[0]:
                    await self._too_large(send_wrapper, rid, max_body)
            except Exception as exc:
                log.error(
                    "unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc
                )
                if not started[0]:
                    body = orjson.dumps(
                        error_body("internal_error", "internal server error", request_id=rid)
                    )
                    await self._send_json(send_wrapper, 500, body)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(self.service, method, path, str(status_holder[0])).inc()
            HTTP_LATENCY.labels(self.service, method, path).observe(time.perf_counter() - start)
            request_id_var.reset(token)

    async def _too_large(self, send: Send, rid: str, max_body: int) -> None:
        body = orjson.dumps(
            error_body(
                "payload_too_large",
                f"request body exceeds {max_body} bytes",
                request_id=rid,
            )
        )
        await self._send_json(send, 413, body)

    @staticmethod
    async def _send_json(send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        details.append(
            {"field": ".".join(loc), "message": err.get("msg", ""), "type": err.get("type", "")}
        )
    return details


def install_common(
    app: FastAPI,
    *,
    service: str,
    max_body_bytes: int = 64 * 1024,
    body_limits: Sequence[BodyLimit] = (),
) -> None:
    """Install request ids, the body limit (``body_limits``: routes with their own), the error
    shape and ``/metrics`` on ``app``."""

    @app.exception_handler(PlatformError)
    async def _platform_error(request: Request, exc: PlatformError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, details=exc.details, request_id=request_id_var.get()),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        if any(d["type"] == "json_invalid" for d in details):
            return JSONResponse(
                error_body(
                    "bad_request",
                    "malformed JSON body",
                    details=details,
                    request_id=request_id_var.get(),
                ),
                status_code=400,
            )
        return JSONResponse(
            error_body(
                "validation_error",
                "request validation failed",
                details=details,
                request_id=request_id_var.get(),
            ),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse(
            error_body(code, str(exc.detail), request_id=request_id_var.get()),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(
        RequestContextMiddleware,
        service=service,
        max_body_bytes=max_body_bytes,
        body_limits=body_limits,
    )
