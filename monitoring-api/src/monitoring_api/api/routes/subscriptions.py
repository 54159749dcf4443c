"""Alert webhook subscriptions of the caller: create, list, show, delete, deliveries.

Viewers (self-registered users) are read-only: they may list and read, not create or delete."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from monitoring_api import subscriptions_service
from monitoring_api.api.deps import (
    CurrentUser,
    DirectoryDep,
    DispatcherDep,
    EgressDep,
    StoreDep,
    WriterUser,
    visible_device_list,
)
from monitoring_api.schemas import (
    DeliveryPublic,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionPublic,
)

router = APIRouter(prefix="/monitoring/subscriptions", tags=["subscriptions"])

SubId = Annotated[uuid.UUID, Path()]


@router.post("", status_code=201, response_model=SubscriptionCreated)
async def create_subscription(
    body: SubscriptionCreate,
    caller: WriterUser,
    store: StoreDep,
    directory: DirectoryDep,
    dispatcher: DispatcherDep,
    egress: EgressDep,
) -> SubscriptionCreated:
    """Subscribe a webhook URL to alert changes (the secret is shown only in this answer)."""
    device_ids = await visible_device_list(directory, caller, body.device_ids)
    return await subscriptions_service.create(
        store=store,
        dispatcher=dispatcher,
        egress=egress,
        body=body,
        device_ids=device_ids,
        user_id=caller.user_id,
        is_admin=caller.is_admin,
    )


@router.get("", response_model=list[SubscriptionPublic])
async def list_subscriptions(caller: CurrentUser, store: StoreDep) -> list[SubscriptionPublic]:
    """The caller's subscriptions (an admin sees everyone's)."""
    return await subscriptions_service.list_mine(
        store=store, user_id=caller.user_id, is_admin=caller.is_admin
    )


@router.get("/{sub_id}", response_model=SubscriptionPublic)
async def get_subscription(
    sub_id: SubId, caller: CurrentUser, store: StoreDep
) -> SubscriptionPublic:
    """One subscription with its recent deliveries counted by status."""
    return await subscriptions_service.show(
        store=store, sub_id=str(sub_id), user_id=caller.user_id, is_admin=caller.is_admin
    )


@router.get("/{sub_id}/deliveries", response_model=list[DeliveryPublic])
async def list_deliveries(
    sub_id: SubId,
    caller: CurrentUser,
    store: StoreDep,
    status: Annotated[str | None, Query(pattern="^(pending|delivered|failed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeliveryPublic]:
    """Deliveries of a subscription, newest first: attempts, next attempt, last error."""
    return await subscriptions_service.deliveries(
        store=store,
        sub_id=str(sub_id),
        user_id=caller.user_id,
        is_admin=caller.is_admin,
        status=status,
        limit=limit,
    )


@router.delete("/{sub_id}", status_code=204, response_class=Response)
async def delete_subscription(
    sub_id: SubId, caller: WriterUser, store: StoreDep, dispatcher: DispatcherDep
) -> Response:
    """Stop deliveries to this webhook."""
    await subscriptions_service.delete(
        store=store,
        dispatcher=dispatcher,
        sub_id=str(sub_id),
        user_id=caller.user_id,
        is_admin=caller.is_admin,
    )
    return Response(status_code=204)
