"""Error base shared by every service and the one JSON error shape.

Every error response in the platform looks like::

    {"error": {"code": "not_found", "message": "device not found", "details": [...],
               "request_id": "…"}}
"""

from __future__ import annotations

from typing import Any


class PlatformError(Exception):
    """Base of every service's errors; ``status_code`` is the HTTP mapping."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers


class BadRequest(PlatformError):
    status_code = 400
    code = "bad_request"


class Unauthorized(PlatformError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "invalid or missing credentials", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kw)


class Forbidden(PlatformError):
    status_code = 403
    code = "forbidden"


class NotFound(PlatformError):
    status_code = 404
    code = "not_found"


class Conflict(PlatformError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(PlatformError):
    status_code = 413
    code = "payload_too_large"


class ValidationFailed(PlatformError):
    status_code = 422
    code = "validation_error"


class TooManyRequests(PlatformError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, **kw: Any) -> None:
        kw.setdefault("headers", {"Retry-After": str(max(1, retry_after))})
        super().__init__(message, **kw)


class ServiceUnavailable(PlatformError):
    status_code = 503
    code = "unavailable"


def error_body(
    code: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    if request_id:
        body["request_id"] = request_id
    return {"error": body}
