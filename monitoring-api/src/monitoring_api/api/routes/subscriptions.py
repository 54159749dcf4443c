"""Alert webhook subscriptions of the caller: create, list, show, delete, deliveries."""

from __future__ import annotations

import ipaddress
import secrets
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from iot_common.errors import NotFound, ValidationFailed
from monitoring_api.api.deps import (
    Caller,
    CurrentUser,
    DirectoryDep,
    SettingsDep,
    StoreDep,
    visible_device,
)
from monitoring_api.schemas import (
    DeliveryPublic,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionPublic,
)
from monitoring_api.webhooks import ALL_DEVICES, WebhookDispatcher, summary
from monitoring_store.base import MonitoringStore, Subscription

router = APIRouter(prefix="/monitoring/subscriptions", tags=["subscriptions"])

SubId = Annotated[uuid.UUID, Path()]


def _public(sub: Subscription, deliveries: dict[str, int] | None = None) -> SubscriptionPublic:
    device_ids = None if sub.device_ids and ALL_DEVICES in sub.device_ids else sub.device_ids
    return SubscriptionPublic(
        id=sub.id,
        owner_id=sub.owner_id,
        url=sub.url,
        device_ids=device_ids,
        min_severity=sub.min_severity,
        rule_types=sub.rule_types,
        created_at=sub.created_at,
        deliveries=deliveries,
    )


def _check_url(url: str, allow_private: bool) -> None:
    if allow_private:
        return
    host = (url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]).rsplit(":", 1)[0]
    host = host.strip("[]").lower()
    private = host in ("localhost", "") or host.endswith(".localhost")
    try:
        ip = ipaddress.ip_address(host)
        private = private or ip.is_private or ip.is_loopback or ip.is_link_local
    except ValueError:
        pass
    if private:
        raise ValidationFailed(
            "webhook URL points at a private address",
            details=[{"field": "url", "message": "must be a public http(s) URL"}],
        )


async def _own(store: MonitoringStore, caller: Caller, sub_id: str) -> Subscription:
    owner = None if caller.is_admin else caller.user_id
    for sub in await store.list_subscriptions(owner_id=owner):
        if sub.id == sub_id:
            return sub
    raise NotFound("subscription not found")


def _dispatcher(request: Request) -> WebhookDispatcher | None:
    return getattr(request.app.state, "webhooks", None)


@router.post("", status_code=201, response_model=SubscriptionCreated)
async def create_subscription(
    body: SubscriptionCreate,
    request: Request,
    caller: CurrentUser,
    store: StoreDep,
    directory: DirectoryDep,
    settings: SettingsDep,
) -> SubscriptionCreated:
    """Subscribe a webhook URL to alert changes (the secret is shown only in this answer)."""
    url = str(body.url)
    if len(url) > 2048:
        raise ValidationFailed(
            "url too long", details=[{"field": "url", "message": "at most 2048 characters"}]
        )
    _check_url(url, settings.webhook_allow_private)
    device_ids: list[str] | None = None
    if body.device_ids:
        device_ids = []
        for raw in dict.fromkeys(body.device_ids):
            try:
                did = str(uuid.UUID(raw))
            except ValueError as exc:
                raise ValidationFailed(
                    f"{raw!r} is not a device id",
                    details=[{"field": "device_ids", "message": "must be UUIDs"}],
                ) from exc
            await visible_device(directory, caller, did)
            device_ids.append(did)
    elif caller.is_admin:
        device_ids = [ALL_DEVICES]
    secret = body.secret or secrets.token_urlsafe(32)
    sub = Subscription(
        id=str(uuid.uuid4()),
        owner_id=caller.user_id,
        url=url,
        secret=secret,
        device_ids=device_ids,
        min_severity=body.min_severity,
        rule_types=list(body.rule_types) if body.rule_types else None,
        created_at=time.time(),
    )
    await store.create_subscription(sub)
    dispatcher = _dispatcher(request)
    if dispatcher is not None:
        dispatcher.invalidate()
    return SubscriptionCreated(**_public(sub).model_dump(), secret=secret)


@router.get("", response_model=list[SubscriptionPublic])
async def list_subscriptions(caller: CurrentUser, store: StoreDep) -> list[SubscriptionPublic]:
    """The caller's subscriptions (an admin sees everyone's)."""
    owner = None if caller.is_admin else caller.user_id
    return [_public(s) for s in await store.list_subscriptions(owner_id=owner)]


@router.get("/{sub_id}", response_model=SubscriptionPublic)
async def get_subscription(
    sub_id: SubId, caller: CurrentUser, store: StoreDep
) -> SubscriptionPublic:
    """One subscription with its recent deliveries counted by status."""
    sub = await _own(store, caller, str(sub_id))
    recent = await store.list_deliveries(subscription_id=sub.id, limit=1000)
    return _public(sub, summary(recent))


@router.get("/{sub_id}/deliveries", response_model=list[DeliveryPublic])
async def list_deliveries(
    sub_id: SubId,
    caller: CurrentUser,
    store: StoreDep,
    status: Annotated[str | None, Query(pattern="^(pending|delivered|failed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeliveryPublic]:
    """Deliveries of a subscription, newest first: attempts, next attempt, last error."""
    sub = await _own(store, caller, str(sub_id))
    deliveries = await store.list_deliveries(subscription_id=sub.id, status=status, limit=limit)
    return [
        DeliveryPublic(
            id=d.id,
            subscription_id=d.subscription_id,
            status=d.status,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            last_error=d.last_error,
            created_at=d.created_at,
            updated_at=d.updated_at,
            payload=d.payload,
        )
        for d in deliveries
    ]


@router.delete("/{sub_id}", status_code=204, response_class=Response)
async def delete_subscription(
    sub_id: SubId, request: Request, caller: CurrentUser, store: StoreDep
) -> Response:
    """Stop deliveries to this webhook."""
    owner = None if caller.is_admin else caller.user_id
    if not await store.delete_subscription(str(sub_id), owner_id=owner):
        raise NotFound("subscription not found")
    dispatcher = _dispatcher(request)
    if dispatcher is not None:
        dispatcher.invalidate()
    return Response(status_code=204)
