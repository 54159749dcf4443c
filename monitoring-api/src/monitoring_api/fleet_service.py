"""The fleet table: the caller's devices, sorted and paged here, with each metric's last value.

Sorting is done over every device the caller may see, not over a page the browser holds: by
name, type, status or last seen over device-management's list (cached briefly, see
``devices.py``), by one metric's last value in the store (``rank_by_latest``). Ties keep name
order, and devices without the sort key come last in either direction, so the order is total
and an offset pages through it without repeating or skipping a device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from monitoring_api.devices import DeviceInfo
from monitoring_api.schemas import FleetPage, LatestValue
from monitoring_store.base import MonitoringStore

SortOrder = Literal["asc", "desc"]

#: Device status order when sorting by status (ascending): the platform's three statuses.
DEVICE_STATUS_ORDER = {"online": 0, "offline": 1, "never_seen": 2}

#: The sort keys over device fields; ``m:<metric>`` sorts by that metric's last value.
FIELD_SORTS = ("name", "type", "status", "last_seen")
METRIC_SORT_PREFIX = "m:"


def _name_key(d: DeviceInfo) -> tuple[str, str]:
    return (str(d.get("name") or "").lower(), str(d.get("id")))


def _last_seen(d: DeviceInfo) -> float | None:
    raw = d.get("last_seen")
    if not raw:
        return None
    try:
        return datetime.fromisoformat(str(raw)).timestamp()
    except ValueError:
        return None


#: A device's value for each field sort (None: the device has none and goes last).
_FIELD_KEYS: dict[str, Callable[[DeviceInfo], Any]] = {
    "name": lambda d: str(d.get("name") or "").lower(),
    "type": lambda d: str(d.get("type") or "").lower() or None,
    "status": lambda d: DEVICE_STATUS_ORDER.get(str(d.get("status") or "never_seen"), 3),
    "last_seen": _last_seen,
}


def _sorted_by_field(devices: list[DeviceInfo], sort: str, order: SortOrder) -> list[DeviceInfo]:
    key = _FIELD_KEYS[sort]
    present = [d for d in devices if key(d) is not None]
    missing = [d for d in devices if key(d) is None]
    # Python's sort is stable with reverse=True too: ties keep name order.
    present.sort(key=key, reverse=order == "desc")
    return present + missing


async def fleet_page(
    *,
    store: MonitoringStore,
    devices: Sequence[DeviceInfo],
    shown: Callable[[DeviceInfo], dict[str, Any]],
    sort: str,
    order: SortOrder,
    name_contains: str | None,
    limit: int,
    offset: int,
) -> FleetPage:
    """One page of ``devices`` (the caller's) in the order asked, with last values."""
    needle = (name_contains or "").strip().lower()
    listed = sorted(
        (d for d in devices if "id" in d and needle in str(d.get("name") or "").lower()),
        key=_name_key,
    )
    if sort.startswith(METRIC_SORT_PREFIX):
        by_id = {str(d["id"]): d for d in listed}
        ids = await store.rank_by_latest(
            metric=sort.removeprefix(METRIC_SORT_PREFIX),
            device_ids=list(by_id),
            descending=order == "desc",
            limit=limit,
            offset=offset,
        )
        page = [by_id[i] for i in ids]
    else:
        page = _sorted_by_field(listed, sort, order)[offset : offset + limit]
    latest: dict[str, dict[str, LatestValue]] = {}
    if page:
        for s in await store.latest_values(device_ids=[str(d["id"]) for d in page]):
            latest.setdefault(s.device_id, {})[s.metric] = LatestValue(value=s.value, ts=s.ts)
    items = [{**shown(d), "latest": latest.get(str(d["id"]), {})} for d in page]
    total = len(listed)
    return FleetPage(
        items=items,
        total=total,
        sort=sort,
        order=order,
        limit=limit,
        offset=offset,
        next_offset=offset + limit if offset + limit < total else None,
    )
