"""Refused readings of the caller's devices: why each was refused, newest first."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from monitoring_api.api.deps import (
    CurrentUser,
    DirectoryDep,
    SettingsDep,
    StoreDep,
    check_page_size,
    scoped_device_ids,
)
from monitoring_api.schemas import DeadLetterList, DeadLetterPublic
from monitoring_api.timeutil import to_epoch

router = APIRouter(prefix="/monitoring/deadletters", tags=["deadletters"])


@router.get("", response_model=DeadLetterList)
async def list_deadletters(
    caller: CurrentUser,
    store: StoreDep,
    directory: DirectoryDep,
    settings: SettingsDep,
    device_id: Annotated[
        uuid.UUID | None, Query(description="one device (default: all the caller's)")
    ] = None,
    reason: Annotated[str | None, Query(max_length=64, description="e.g. non_finite")] = None,
    before: Annotated[
        datetime | None, Query(description="refused before this instant (the next page)")
    ] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
) -> DeadLetterList:
    """The last refused messages (kept 7 days): reason, time, source, the first KiB sent."""
    check_page_size(limit, settings)
    ids = await scoped_device_ids(directory, caller, None if device_id is None else str(device_id))
    rows = await store.query_deadletters(
        device_ids=ids,
        reason=reason,
        before=to_epoch(before, 0.0) if before is not None else None,
        limit=limit,
    )
    items = [DeadLetterPublic.model_validate(r, from_attributes=True) for r in rows]
    return DeadLetterList(items=items, next_before=items[-1].ts if len(items) == limit else None)
