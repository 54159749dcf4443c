"""Alert webhook subscriptions of a caller: create, list, show, delete, deliveries."""

from __future__ import annotations

import secrets
import time
import uuid

from iot_common.errors import NotFound, ValidationFailed
from monitoring_api.egress import Egress
from monitoring_api.schemas import (
    DeliveryPublic,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionPublic,
)
from monitoring_api.webhooks import ALL_DEVICES, WebhookDispatcher, summary
from monitoring_store.base import Delivery, MonitoringStore, Subscription

MAX_URL_LENGTH = 2048


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


def _delivery_public(d: Delivery) -> DeliveryPublic:
    return DeliveryPublic(
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


def _owner_filter(user_id: str, is_admin: bool) -> str | None:
    """Whose subscriptions a caller sees: their own; an admin everyone's (None)."""
    return None if is_admin else user_id


async def create(
    *,
    store: MonitoringStore,
    dispatcher: WebhookDispatcher | None,
    egress: Egress,
    body: SubscriptionCreate,
    device_ids: list[str] | None,
    user_id: str,
    is_admin: bool,
) -> SubscriptionCreated:
    """Store a subscription; the secret is in this answer only.

    ``device_ids`` are the caller's visible devices the body named, None for all of theirs
    (an admin's then covers every device).
    """
    url = str(body.url)
    if len(url) > MAX_URL_LENGTH:
        raise ValidationFailed(
            "url too long",
            details=[{"field": "url", "message": f"at most {MAX_URL_LENGTH} characters"}],
        )
    # Checked again, on the address actually used, each time a delivery connects.
    assert body.url.host is not None and body.url.port is not None  # http(s) URLs have both
    await egress.check_url(body.url.host, body.url.port)
    if device_ids is None and is_admin:
        device_ids = [ALL_DEVICES]
    secret = body.secret or secrets.token_urlsafe(32)
    sub = Subscription(
        id=str(uuid.uuid4()),
        owner_id=user_id,
        url=url,
        secret=secret,
        device_ids=device_ids,
        min_severity=body.min_severity,
        rule_types=list(body.rule_types) if body.rule_types else None,
        created_at=time.time(),
    )
    await store.create_subscription(sub)
    if dispatcher is not None:
        dispatcher.invalidate()
    return SubscriptionCreated(**_public(sub).model_dump(), secret=secret)


async def list_mine(
    *, store: MonitoringStore, user_id: str, is_admin: bool
) -> list[SubscriptionPublic]:
    subs = await store.list_subscriptions(owner_id=_owner_filter(user_id, is_admin))
    return [_public(s) for s in subs]


async def _own(store: MonitoringStore, sub_id: str, user_id: str, is_admin: bool) -> Subscription:
    for sub in await store.list_subscriptions(owner_id=_owner_filter(user_id, is_admin)):
        if sub.id == sub_id:
            return sub
    raise NotFound("subscription not found")


async def show(
    *, store: MonitoringStore, sub_id: str, user_id: str, is_admin: bool
) -> SubscriptionPublic:
    """One of the caller's subscriptions with its recent deliveries counted by status."""
    sub = await _own(store, sub_id, user_id, is_admin)
    recent = await store.list_deliveries(subscription_id=sub.id, limit=1000)
    return _public(sub, summary(recent))


async def deliveries(
    *,
    store: MonitoringStore,
    sub_id: str,
    user_id: str,
    is_admin: bool,
    status: str | None,
    limit: int,
) -> list[DeliveryPublic]:
    """Deliveries of one of the caller's subscriptions, newest first."""
    sub = await _own(store, sub_id, user_id, is_admin)
    found = await store.list_deliveries(subscription_id=sub.id, status=status, limit=limit)
    return [_delivery_public(d) for d in found]


async def delete(
    *,
    store: MonitoringStore,
    dispatcher: WebhookDispatcher | None,
    sub_id: str,
    user_id: str,
    is_admin: bool,
) -> None:
    if not await store.delete_subscription(sub_id, owner_id=_owner_filter(user_id, is_admin)):
        raise NotFound("subscription not found")
    if dispatcher is not None:
        dispatcher.invalidate()
