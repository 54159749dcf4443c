"""Who may see which device: device-management answers, cached briefly.

The monitoring API never keeps its own copy of device ownership. It asks device-management
``GET /devices/{id}`` with the caller's own token (200 = the caller may see it), and lists the
caller's devices with ``GET /devices/``. For records off the bus that lack an owner it asks
``GET /internal/devices/{id}`` with the internal token. Answers are cached for a few seconds
so a dashboard polling a chart does not turn into one device-management call per request.

Changes the dashboard makes to a device (its configuration, its credential) are relayed to
device-management with the caller's own token too, so device-management alone decides who may
make them and how a configuration is validated; its refusals are passed on as they are.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import httpx

from iot_common.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PlatformError,
    ServiceUnavailable,
    ValidationFailed,
)

log = logging.getLogger(__name__)

DeviceInfo = dict[str, Any]


class DeviceDirectory(Protocol):
    """What the API needs to know about devices."""

    async def get_device(self, token: str, device_id: str) -> DeviceInfo | None:
        """The device as the token's user sees it, or None when they may not see it."""

    async def list_devices(self, token: str) -> list[DeviceInfo]:
        """Every device the token's user may see."""

    async def owner_of(self, device_id: str) -> str | None:
        """The owner of a device (internal lookup), None if unknown."""

    async def change_device(
        self,
        token: str,
        device_id: str,
        *,
        method: str,
        path: str = "",
        body: Any = None,
        content: bytes | None = None,
    ) -> DeviceInfo:
        """Relay a change of ``/devices/{id}{path}`` with the token's user's own rights (a
        ``body`` to encode, or ``content``: JSON text sent as it is); its answer, or
        device-management's refusal raised as the same error."""

    async def close(self) -> None: ...


#: device-management's refusals, raised here with their message and details unchanged.
_REFUSALS: dict[int, type[PlatformError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
}


class _TTLCache:
    def __init__(self, ttl: float, size: int = 50_000) -> None:
        self.ttl = ttl
        self.size = size
        self._data: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> tuple[bool, Any]:
        hit = self._data.get(key)
        if hit is None:
            return False, None
        if hit[0] < time.monotonic():
            self._data.pop(key, None)
            return False, None
        return True, hit[1]

    def put(self, key: Any, value: Any) -> None:
        if len(self._data) >= self.size:
            now = time.monotonic()
            self._data = {k: v for k, v in self._data.items() if v[0] >= now}
            if len(self._data) >= self.size:
                self._data.clear()
        self._data[key] = (time.monotonic() + self.ttl, value)

    def forget(self, *keys: Any) -> None:
        for key in keys:
            self._data.pop(key, None)


class HttpDeviceDirectory:
    """Device-management over HTTP (the client may be an ASGI transport in tests)."""

    def __init__(
        self,
        base_url: str,
        *,
        internal_token: str,
        http: httpx.AsyncClient | None = None,
        cache_ttl: float = 15.0,
        timeout: float = 5.0,
        page_size: int = 500,
    ) -> None:
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._own_http = http is None
        self._internal_token = internal_token
        self._cache = _TTLCache(cache_ttl)
        self._page_size = page_size

    async def close(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def _get(self, url: str, headers: dict[str, str], **params: Any) -> httpx.Response:
        try:
            return await self._http.get(url, headers=headers, params=params or None)
        except httpx.HTTPError as exc:
            log.warning("device-management unreachable: %s", exc)
            raise ServiceUnavailable("device-management is unreachable") from exc

    async def get_device(self, token: str, device_id: str) -> DeviceInfo | None:
        key = ("dev", token, device_id)
        hit, value = self._cache.get(key)
        if hit:
            return value  # type: ignore[no-any-return]
        resp = await self._get(f"/devices/{device_id}", {"Authorization": f"Bearer {token}"})
        if resp.status_code == 200:
            info: DeviceInfo | None = resp.json()
        elif resp.status_code in (404, 422, 400, 403):
            info = None
        else:
            log.warning("device-management answered %s for device %s", resp.status_code, device_id)
            raise ServiceUnavailable("device-management did not answer")
        self._cache.put(key, info)
        return info

    async def list_devices(self, token: str) -> list[DeviceInfo]:
        key = ("list", token)
        hit, value = self._cache.get(key)
        if hit:
            return value  # type: ignore[no-any-return]
        headers = {"Authorization": f"Bearer {token}"}
        devices: list[DeviceInfo] = []
        offset = 0
        while True:
            resp = await self._get("/devices/", headers, limit=self._page_size, offset=offset)
            if resp.status_code != 200:
                log.warning("device-management answered %s listing devices", resp.status_code)
                raise ServiceUnavailable("device-management did not answer")
            body = resp.json()
            items = body if isinstance(body, list) else body.get("items", [])
            devices.extend(items)
            total = body.get("total") if isinstance(body, dict) else None
            if len(items) < self._page_size or (total is not None and len(devices) >= total):
                break
            offset += len(items)
        self._cache.put(key, devices)
        for dev in devices:
            if "id" in dev:
                self._cache.put(("dev", token, str(dev["id"])), dev)
        return devices

    async def change_device(
        self,
        token: str,
        device_id: str,
        *,
        method: str,
        path: str = "",
        body: Any = None,
        content: bytes | None = None,
    ) -> DeviceInfo:
        headers = {"Authorization": f"Bearer {token}"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = await self._http.request(
                method,
                f"/devices/{device_id}{path}",
                headers=headers,
                json=body if content is None else None,
                content=content,
            )
        except httpx.HTTPError as exc:
            log.warning("device-management unreachable: %s", exc)
            raise ServiceUnavailable("device-management is unreachable") from exc
        # What this token saw of the device (and its list) is stale now, whatever the answer.
        self._cache.forget(("dev", token, device_id), ("list", token))
        if resp.is_success:
            answer: DeviceInfo = resp.json()
            return answer
        refusal = _REFUSALS.get(resp.status_code)
        if refusal is None:
            log.warning(
                "device-management answered %s to %s of device %s",
                resp.status_code,
                method,
                device_id,
            )
            raise ServiceUnavailable("device-management did not answer")
        try:
            error = resp.json()["error"]
            message, details = str(error["message"]), error.get("details")
        except (ValueError, KeyError, TypeError):
            message, details = "refused by device-management", None
        raise refusal(message, details=details if isinstance(details, list) else None)

    async def owner_of(self, device_id: str) -> str | None:
        key = ("owner", device_id)
        hit, value = self._cache.get(key)
        if hit:
            return value  # type: ignore[no-any-return]
        resp = await self._get(
            f"/internal/devices/{device_id}", {"X-Internal-Token": self._internal_token}
        )
        owner: str | None = None
        if resp.status_code == 200:
            raw = resp.json().get("owner_id")
            owner = str(raw) if raw is not None else None
        elif resp.status_code != 404:
            raise ServiceUnavailable("device-management did not answer")
        self._cache.put(key, owner)
        return owner
