"""Annotated dependencies of the HTTP routes: settings, store, caller, device access."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from iot_common.auth import JWTVerifier, Principal, bearer_token
from iot_common.errors import Forbidden, NotFound, ValidationFailed
from monitoring_api.config import MonitoringApiSettings
from monitoring_api.devices import DeviceDirectory, DeviceInfo
from monitoring_api.publisher import AlertPublisher
from monitoring_store.base import MonitoringStore


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified caller plus their raw token (forwarded to device-management)."""

    principal: Principal
    token: str

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin


def get_settings_dep(request: Request) -> MonitoringApiSettings:
    settings: MonitoringApiSettings = request.app.state.settings
    return settings


def get_store(request: Request) -> MonitoringStore:
    store: MonitoringStore = request.app.state.store
    return store


def get_directory(request: Request) -> DeviceDirectory:
    directory: DeviceDirectory = request.app.state.devices
    return directory


def get_publisher(request: Request) -> AlertPublisher:
    publisher: AlertPublisher = request.app.state.publisher
    return publisher


async def get_caller(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Caller:
    token = bearer_token(authorization)
    verifier: JWTVerifier = request.app.state.verifier
    principal = await verifier.verify(token)
    return Caller(principal=principal, token=token)


SettingsDep = Annotated[MonitoringApiSettings, Depends(get_settings_dep)]
StoreDep = Annotated[MonitoringStore, Depends(get_store)]
DirectoryDep = Annotated[DeviceDirectory, Depends(get_directory)]
PublisherDep = Annotated[AlertPublisher, Depends(get_publisher)]
CurrentUser = Annotated[Caller, Depends(get_caller)]


async def get_writer(caller: CurrentUser) -> Caller:
    if not caller.principal.can_write:
        raise Forbidden("viewers may not change alerts or subscriptions")
    return caller


WriterUser = Annotated[Caller, Depends(get_writer)]


async def visible_device(directory: DeviceDirectory, caller: Caller, device_id: str) -> DeviceInfo:
    """The device if the caller may see it; 404 (not 403) otherwise, as device-management does."""
    info = await directory.get_device(caller.token, device_id)
    if info is None:
        raise NotFound("device not found")
    return info


async def visible_device_ids(directory: DeviceDirectory, caller: Caller) -> list[str] | None:
    """The ids of the caller's devices, or None for admins (every device)."""
    if caller.is_admin:
        return None
    devices = await directory.list_devices(caller.token)
    return [str(d["id"]) for d in devices if "id" in d]


async def scoped_device_ids(
    directory: DeviceDirectory, caller: Caller, device_id: str | None
) -> list[str] | None:
    """The devices a list query covers: the one asked for (404 if not visible), else all the
    caller may see (None = every device, for admins)."""
    if device_id is not None:
        await visible_device(directory, caller, device_id)
        return [device_id]
    return await visible_device_ids(directory, caller)


def check_page_size(limit: int, settings: MonitoringApiSettings) -> None:
    """422 in the common shape when ``limit`` exceeds the configured page size cap."""
    if limit > settings.max_page_size:
        raise ValidationFailed(
            f"limit exceeds the page size cap of {settings.max_page_size}",
            details=[{"field": "limit", "message": f"must be at most {settings.max_page_size}"}],
        )


def declared_metrics(device: dict[str, Any]) -> set[str] | None:
    """Metric names a device's config declares, None when it declares none (any is allowed)."""
    config = device.get("config") or {}
    metrics = config.get("metrics") if isinstance(config, dict) else None
    if not metrics:
        return None
    return {str(m["name"]) for m in metrics if isinstance(m, dict) and "name" in m}
