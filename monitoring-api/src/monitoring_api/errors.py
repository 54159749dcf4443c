"""The monitoring API's own errors, all rooted in :class:`iot_common.errors.PlatformError`.

HTTP routes never map errors themselves: ``iot_common.web.install_common`` installs the one
handler that turns any ``PlatformError`` into the platform's error shape, and the Socket.IO
hub turns the same errors into its ``{"ok": false, "error": …}`` acknowledgement in one place.
Generic cases (not found, validation) use the shared classes of ``iot_common.errors``.
"""

from __future__ import annotations

from iot_common.errors import PlatformError


class MonitoringApiError(PlatformError):
    """Base of the errors only this service raises."""


class JoinRefused(MonitoringApiError):
    """A Socket.IO join or leave the caller may not make, or cannot be understood."""

    status_code = 400
    code = "bad_request"


class NotConnected(JoinRefused):
    """A join from a Socket.IO session that has no verified caller (it was dropped)."""

    status_code = 401
    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("not connected")


class AlertTransitionRefused(MonitoringApiError):
    """The alert cannot move to the requested status (a cleared alert stays cleared)."""

    status_code = 409
    code = "conflict"


class UnsafeWebhookTarget(MonitoringApiError):
    """A webhook URL whose host is, or resolves to, an address webhooks may not reach."""

    status_code = 422
    code = "validation_error"
