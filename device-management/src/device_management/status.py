"""A device's connectivity status, derived from the last-seen time the ingest bridge keeps."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from device_management.schemas import DeviceStatus


def derive_status(
    last_seen: float | None, *, offline_after: float, now: float | None = None
) -> tuple[DeviceStatus, datetime | None]:
    if last_seen is None:
        return DeviceStatus.NEVER_SEEN, None
    now = time.time() if now is None else now
    status = DeviceStatus.ONLINE if now - last_seen <= offline_after else DeviceStatus.OFFLINE
    return status, datetime.fromtimestamp(last_seen, tz=UTC)
