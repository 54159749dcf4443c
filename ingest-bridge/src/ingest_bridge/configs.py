"""Device configuration for devices: their desired config and the version they applied.

The bridge authenticates devices (HTTP token, or the broker's account on MQTT) and forwards
what they ask about their configuration to device-management's internal API, which owns it:
``GET /internal/devices/{id}/config`` (``ETag`` = the version, 304 on ``If-None-Match``) and
``PUT /internal/devices/{id}/config/reported``. Nothing is cached here: a device that polls
gets a 304 from device-management, and a config changed a moment ago is never answered stale.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from ingest_bridge.devices import DeviceLookupUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    """device-management's answer, passed on to the device as it is."""

    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


#: Headers of device-management's answer a device should see.
_PASSED_ON = ("etag", "cache-control", "content-type")


class ConfigClient:
    """Calls device-management's internal configuration endpoints for authenticated devices."""

    def __init__(
        self,
        *,
        device_management_url: str,
        internal_token: str,
        http: httpx.AsyncClient | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._base = device_management_url.rstrip("/")
        self._headers = {"X-Internal-Token": internal_token}
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._own_http = http is None

    async def close(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def desired(self, device_id: str, *, if_none_match: str | None = None) -> Answer:
        """The device's desired configuration (200 with the document, or 304, or 404)."""
        headers = dict(self._headers)
        if if_none_match:
            headers["If-None-Match"] = if_none_match
        return await self._call("GET", f"/internal/devices/{device_id}/config", headers=headers)

    async def report(self, device_id: str, version: int) -> Answer:
        """Record the version the device applied (200 with where it stands, 404, or 409)."""
        return await self._call(
            "PUT",
            f"/internal/devices/{device_id}/config/reported",
            headers=self._headers,
            body={"version": version},
        )

    async def _call(
        self, method: str, path: str, *, headers: dict[str, str], body: Any = None
    ) -> Answer:
        try:
            resp = await self._http.request(method, self._base + path, headers=headers, json=body)
        except httpx.HTTPError as exc:
            raise DeviceLookupUnavailable(f"device-management unreachable: {exc}") from exc
        if resp.status_code >= 500 or resp.status_code == 401:
            # 401: our internal token is wrong, which is ours to fix, not the device's.
            raise DeviceLookupUnavailable(
                f"device-management answered {resp.status_code} to {method} {path}"
            )
        kept = {k: v for k, v in resp.headers.items() if k.lower() in _PASSED_ON}
        return Answer(resp.status_code, resp.content, kept)
