"""The fleet table: the caller's devices sorted and paged over all of them, with last values."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from monitoring_api import fleet_service
from monitoring_api.api.deps import (
    CurrentUser,
    DirectoryDep,
    SettingsDep,
    StoreDep,
    check_page_size,
)
from monitoring_api.api.routes.session import shown_device
from monitoring_api.schemas import FleetPage

router = APIRouter(prefix="/monitoring/fleet", tags=["fleet"])

SORT_PATTERN = r"^(name|type|status|last_seen|m:[A-Za-z_][A-Za-z0-9_.\-]{0,63})$"


@router.get("", response_model=FleetPage)
async def fleet(
    caller: CurrentUser,
    store: StoreDep,
    directory: DirectoryDep,
    settings: SettingsDep,
    sort: Annotated[
        str,
        Query(
            pattern=SORT_PATTERN,
            description="name, type, status, last_seen, or m:<metric> (its last value)",
        ),
    ] = "name",
    order: Annotated[
        fleet_service.SortOrder,
        Query(description="devices without the sort key come last either way"),
    ] = "asc",
    q: Annotated[str | None, Query(max_length=128, description="names containing this")] = None,
    limit: Annotated[int, Query(ge=1, description="page size (capped)")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> FleetPage:
    """The caller's devices with status and the last value of each metric, in the order asked
    over every device (not one page), paged by offset (ties in name order: pages are exact)."""
    check_page_size(limit, settings)
    return await fleet_service.fleet_page(
        store=store,
        devices=await directory.list_devices(caller.token),
        shown=shown_device,
        sort=sort,
        order=order,
        name_contains=q,
        limit=limit,
        offset=offset,
    )
