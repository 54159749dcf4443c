"""Annotated dependencies of the HTTP routes: settings, store, caller, device access."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Header, Path, Request

from iot_common.auth import JWTVerifier, Principal, bearer_token
from iot_common.errors import Forbidden, NotFound, ValidationFailed
from iot_common.events import Alert
from monitoring_api import alerts_service
from monitoring_api.config import MonitoringApiSettings
from monitoring_api.devices import DeviceDirectory, DeviceInfo
from monitoring_api.egress import Egress
from monitoring_api.publisher import AlertPublisher
from monitoring_api.webhooks import WebhookDispatcher
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


def get_dispatcher(request: Request) -> WebhookDispatcher | None:
    """The webhook worker (None before start-up built it); told when subscriptions change."""
    dispatcher: WebhookDispatcher | None = getattr(request.app.state, "webhooks", None)
    return dispatcher


def get_signing_http(request: Request) -> httpx.AsyncClient:
    http: httpx.AsyncClient = request.app.state.signing_http
    return http


def get_egress(request: Request) -> Egress:
    egress: Egress = request.app.state.egress
    return egress


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
SigningHttpDep = Annotated[httpx.AsyncClient, Depends(get_signing_http)]
EgressDep = Annotated[Egress, Depends(get_egress)]
DispatcherDep = Annotated[WebhookDispatcher | None, Depends(get_dispatcher)]
CurrentUser = Annotated[Caller, Depends(get_caller)]


async def get_writer(caller: CurrentUser) -> Caller:
    if not caller.principal.can_write:
        raise Forbidden("viewers may not change alerts or subscriptions")
    return caller


WriterUser = Annotated[Caller, Depends(get_writer)]

AlertId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]


async def get_visible_alert(
    alert_id: AlertId, caller: CurrentUser, store: StoreDep, directory: DirectoryDep
) -> Alert:
    return await alerts_service.visible_alert(
        store=store,
        directory=directory,
        token=caller.token,
        is_admin=caller.is_admin,
        alert_id=alert_id,
    )


#: The alert named in the path, if the caller may see its device (404 otherwise).
VisibleAlert = Annotated[Alert, Depends(get_visible_alert)]


async def visible_device(directory: DeviceDirectory, caller: Caller, device_id: str) -> DeviceInfo:
    """The device if the caller may see it; 404 (not 403) otherwise, as device-management does."""
    info = await directory.get_device(caller.token, device_id)
    if info is None:
        raise NotFound("device not found")
    return info


async def visible_device_list(
    directory: DeviceDirectory, caller: Caller, raw_ids: list[str] | None
) -> list[str] | None:
    """The named devices (422 for a malformed id, 404 for one the caller may not see), each
    once, in the order named; None when none are named."""
    if not raw_ids:
        return None
    device_ids = []
    for raw in dict.fromkeys(raw_ids):
        try:
            did = str(uuid.UUID(raw))
        except ValueError as exc:
            raise ValidationFailed(
                f"{raw!r} is not a device id",
                details=[{"field": "device_ids", "message": "must be UUIDs"}],
            ) from exc
        await visible_device(directory, caller, did)
        device_ids.append(did)
    return device_ids


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


METRIC_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
MAX_METRICS_PER_QUERY = 64


def metric_names(raw: list[str] | None) -> list[str] | None:
    """Accept ``metric=a&metric=b`` and ``metric=a,b``; 422 for a malformed name."""
    if not raw:
        return None
    names: list[str] = []
    for part in raw:
        names.extend(p.strip() for p in part.split(",") if p.strip())
    if len(names) > MAX_METRICS_PER_QUERY:
        raise ValidationFailed(
            "too many metrics",
            details=[{"field": "metric", "message": f"at most {MAX_METRICS_PER_QUERY}"}],
        )
    for name in names:
        if not METRIC_RE.match(name):
            raise ValidationFailed(
                f"unknown metric {name!r}",
                details=[{"field": "metric", "message": f"{name!r} is not a metric name"}],
            )
    return list(dict.fromkeys(names)) or None
