"""Query-time helpers: epoch conversion and the 422s for bad ranges."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from iot_common.errors import ValidationFailed

#: Times before this or after ``now + MAX_FUTURE`` are refused rather than passed to a store.
MIN_TS = 0.0
MAX_FUTURE = 366 * 86_400


def to_epoch(value: datetime | None, default: float) -> float:
    if value is None:
        return default
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def instant_to_epoch(value: float | datetime | None) -> float | None:
    """A query's instant, given as epoch seconds or ISO 8601, in epoch seconds (None stays)."""
    if value is None or isinstance(value, float):
        return value
    return to_epoch(value, 0.0)


def resolve_range(
    start: datetime | None, end: datetime | None, *, default_span: float, max_span: float | None
) -> tuple[float, float]:
    """(start, end) in epoch seconds; 422 for an inverted, out-of-bounds or too long range."""
    now = time.time()
    try:
        end_ts = to_epoch(end, now)
        start_ts = to_epoch(start, end_ts - default_span)
    except (OverflowError, ValueError, OSError) as exc:
        raise ValidationFailed(
            "time out of range", details=[{"field": "start", "message": str(exc)}]
        ) from exc
    for name, ts in (("start", start_ts), ("end", end_ts)):
        if ts < MIN_TS or ts > now + MAX_FUTURE:
            raise ValidationFailed(
                f"{name} is out of range",
                details=[{"field": name, "message": "must be between 1970 and one year ahead"}],
            )
    if start_ts > end_ts:
        raise ValidationFailed(
            "start is after end", details=[{"field": "start", "message": "must not exceed end"}]
        )
    if max_span is not None and end_ts - start_ts > max_span:
        raise ValidationFailed(
            f"range of {end_ts - start_ts:.0f} s exceeds the {max_span:.0f} s limit "
            "for this resolution",
            details=[{"field": "start", "message": f"range must be at most {max_span:.0f} s"}],
        )
    return start_ts, end_ts
