"""Request and response bodies of the monitoring API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from iot_common.events import SEVERITY_RANK, STATUS_RANK

Interval = Literal["raw", "10s", "1m", "5m", "1h", "1d"]
AggregateName = Literal["count", "min", "max", "mean", "p50", "p95", "last"]
SeverityName = Literal["info", "warning", "critical"]
AlertStatusName = Literal["active", "acknowledged", "cleared"]
RollingRange = Literal["5m", "1h", "24h"]
Layout = Literal["points", "columns"]

INTERVAL_SECONDS: dict[str, int] = {"10s": 10, "1m": 60, "5m": 300, "1h": 3600, "1d": 86_400}
ROLLING_SECONDS: dict[str, int] = {"5m": 300, "1h": 3600, "24h": 86_400}
ALL_AGGREGATES: tuple[AggregateName, ...] = ("count", "min", "max", "mean", "p50", "p95", "last")


def _same_order(literal: Any, ranks: Mapping[str, int]) -> None:
    """Refuse to start if a Literal of the API drifted from the platform's one definition."""
    if list(get_args(literal)) != sorted(ranks, key=ranks.__getitem__):
        raise RuntimeError(f"{literal} does not list {dict(ranks)} in rank order")


# Literals are written out so OpenAPI and mypy see the values; they must stay iot_common's.
_same_order(SeverityName, SEVERITY_RANK)
_same_order(AlertStatusName, STATUS_RANK)


class SamplePublic(BaseModel):
    device_id: str
    metric: str
    ts: float
    value: float
    seq: int | None = None


class RecentData(BaseModel):
    items: list[SamplePublic]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page, null on the last page")


class LatestValue(BaseModel):
    value: float
    ts: float = Field(description="when it was read (epoch seconds)")


class FleetPage(BaseModel):
    """A page of the fleet table (``GET /monitoring/fleet``)."""

    items: list[dict[str, Any]] = Field(
        description="devices as ``GET /monitoring/devices`` lists them, each with ``latest``: "
        "the last value of each metric it sent ({metric: {value, ts}})"
    )
    total: int = Field(description="devices matching the name filter, over all pages")
    sort: str
    order: Literal["asc", "desc"]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page, null on the last page")


class Series(BaseModel):
    metric: str
    points: list[dict[str, float | int | None]] | None = Field(
        default=None,
        description="layout=points: one object per bucket, t (bucket start, epoch s) and the "
        "asked aggregates",
    )
    columns: dict[str, list[float | int | None]] | None = Field(
        default=None,
        description="layout=columns: t and each asked aggregate as parallel arrays",
    )


class DeviceData(BaseModel):
    device_id: str
    start: float
    end: float
    interval: Interval
    aggregates: list[AggregateName] | None = None
    layout: Layout | None = None
    series: list[Series] = Field(default_factory=list, description="bucketed stats per metric")
    samples: list[SamplePublic] | None = Field(default=None, description="raw samples")
    truncated: bool = False


class MetricStats(BaseModel):
    metric: str
    count: int
    min: float
    max: float
    mean: float


class FleetStats(BaseModel):
    start: float
    end: float
    range: str | None
    devices_reporting: int
    readings: int
    readings_per_second: float
    metrics: list[MetricStats]
    alerts_by_severity: dict[str, int]
    #: Readings refused in the range, per reason (``GET /monitoring/deadletters`` says which).
    deadletters_by_reason: dict[str, int] = {}


class DeadLetterPublic(BaseModel):
    """A refused message: why, when, and the first KiB of what was sent."""

    id: str
    device_id: str
    ts: float
    reason: str
    source: str
    detail: str | None
    payload: str
    payload_truncated: bool


class DeadLetterList(BaseModel):
    items: list[DeadLetterPublic]
    #: Pass as ``cursor`` for the next (older) page; None when this page is the last.
    next_cursor: str | None


class AlertPublic(BaseModel):
    alert_id: str
    device_id: str
    rule_id: str
    rule_type: str
    severity: str
    status: str
    message: str
    started_at: float
    updated_at: float
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    cleared_at: float | None = None
    owner_id: str | None = None


class AlertList(BaseModel):
    items: list[AlertPublic]
    limit: int
    offset: int
    next_offset: int | None


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl = Field(description="where alert changes are POSTed")
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        pattern=r"^[\x21-\x7e]+$",
        description="HMAC-SHA256 key for the signature header; generated when omitted",
    )
    device_ids: list[str] | None = Field(
        default=None, max_length=1000, description="only these devices (default: all yours)"
    )
    min_severity: SeverityName = "info"
    rule_types: list[Literal["threshold", "rate_of_change", "silent"]] | None = Field(
        default=None, max_length=3
    )


class SubscriptionPublic(BaseModel):
    id: str
    owner_id: str
    url: str
    device_ids: list[str] | None
    min_severity: str
    rule_types: list[str] | None
    created_at: float
    deliveries: dict[str, int] | None = Field(
        default=None, description="recent deliveries by status (pending/delivered/failed)"
    )


class SubscriptionCreated(SubscriptionPublic):
    secret: str = Field(description="shown once; signs every delivery")


class DeliveryPublic(BaseModel):
    id: str
    subscription_id: str
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    updated_at: float
    payload: dict[str, Any]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)
