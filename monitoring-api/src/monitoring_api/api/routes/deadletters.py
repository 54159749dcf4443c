"""Refused readings of the caller's devices: why each was refused, newest first."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from monitoring_api.api.deps import (
    CurrentUser,
    DirectoryDep,
    SettingsDep,
    StoreDep,
    check_page_size,
    scoped_device_ids,
)
from monitoring_api.schemas import DeadLetterList, DeadLetterPublic
from monitoring_api.timeutil import instant_to_epoch

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
        float | datetime | None,
        Query(description="only messages refused before this instant (epoch seconds or ISO 8601)"),
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
) -> DeadLetterList:
    """The last refused messages (kept 7 days): reason, time, source, the first KiB sent."""
    check_page_size(limit, settings)
    ids = await scoped_device_ids(directory, caller, None if device_id is None else str(device_id))
    rows = await store.query_deadletters(
        device_ids=ids,
        reason=reason,
        before=instant_to_epoch(before),
        after=_decode_cursor(cursor) if cursor else None,
        limit=limit,
    )
    items = [DeadLetterPublic.model_validate(r, from_attributes=True) for r in rows]
    last = items[-1] if len(items) == limit else None
    return DeadLetterList(
        items=items, next_cursor=_encode_cursor(last.ts, last.id) if last else None
    )


# A page's position is the exact (ts, id) of its last record, not a rounded instant: a time
# parsed back from a query string keeps microseconds only, and several messages refused in one
# batch share a ts, so an instant alone repeats or skips records at a page boundary.
def _encode_cursor(ts: float, record_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([ts, record_id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        ts, record_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if isinstance(ts, int | float) and not isinstance(ts, bool) and isinstance(record_id, str):
            return float(ts), record_id
    except (ValueError, TypeError):
        pass
    raise HTTPException(422, "cursor: not a next_cursor this API returned")
