"""The monitoring store interface, shared by the stream agents (writes) and the API (reads).

Two backends implement it: PostgreSQL (asyncpg, the local default) and MongoDB (PyMongo's async
API, time-series collections). :func:`monitoring_store.open_store` picks one by URL scheme.
Times are epoch seconds (UTC floats) throughout, as in the bus contract.

Writes are idempotent: windows are upserted by (device, metric, window_seconds, window_start);
raw samples by (device, ts, seq); alerts by alert_id. Replaying a batch changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from iot_common.events import (
    Alert,
    WindowStats,
)
from iot_common.telemetry import DeadLetter

Aggregate = Literal["count", "min", "max", "mean", "stddev", "p50", "p95", "last"]


class AlertTransitionError(ValueError):
    """An alert cannot move to the requested status (e.g. cleared → acknowledged).

    ``current`` is the alert as stored, so callers can answer 409 with its state.
    """

    def __init__(self, current: Alert, requested: str) -> None:
        super().__init__(f"alert {current.alert_id} is {current.status}; cannot become {requested}")
        self.current = current
        self.requested = requested


def dedupe_windows(windows: Sequence[WindowStats]) -> list[WindowStats]:
    """One window per key, the newest ``updated_at`` winning (the later one on a tie).

    A single upsert statement may not touch a row twice, and a batch can legitimately hold an
    open-window update and its final record.
    """
    latest: dict[tuple[str, str, int, float], WindowStats] = {}
    for w in windows:
        key = (w.device_id, w.metric, w.window_seconds, w.window_start)
        prev = latest.get(key)
        if prev is None or w.updated_at >= prev.updated_at:
            latest[key] = w
    return list(latest.values())


def dedupe_rules(rules: Sequence[DeviceRules]) -> list[DeviceRules]:
    """One rule set per device, the highest version winning (the later one on a tie)."""
    latest: dict[str, DeviceRules] = {}
    for r in rules:
        prev = latest.get(r.device_id)
        if prev is None or r.version >= prev.version:
            latest[r.device_id] = r
    return list(latest.values())


@dataclass(slots=True)
class SampleBatch:
    """Raw samples in columnar form (one row per device × metric × reading), for bulk writes."""

    device_id: npt.NDArray[np.object_]
    metric: npt.NDArray[np.object_]
    ts: npt.NDArray[np.float64]
    value: npt.NDArray[np.float64]
    seq: npt.NDArray[np.int64]  # -1 where the device sent none

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True, slots=True)
class Sample:
    device_id: str
    metric: str
    ts: float
    value: float
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Bucket:
    """One time bucket of re-aggregated windows for one device × metric.

    count/min/max/mean/stddev/last are exact from the stored windows (count-weighted mean,
    pooled variance, min of mins, max of maxes, last of lasts). ``stddev`` is the population
    standard deviation (ddof=0), as in the windows the agents store. p50/p95 are exact when the
    bucket covers one stored window; otherwise they are the count-weighted mean of the finest
    windows' percentiles (an approximation; ``exact_percentiles`` says which).
    """

    device_id: str
    metric: str
    bucket_start: float
    bucket_seconds: int
    count: int
    min: float
    max: float
    mean: float
    stddev: float
    p50: float
    p95: float
    last: float
    exact_percentiles: bool


@dataclass(frozen=True, slots=True)
class BucketSeries:
    """The buckets of one device × metric in columnar form: equal-length numpy arrays, in
    bucket order. What charts and the API's JSON want, without a Python object per bucket
    (24 h of 1-minute buckets × 5 metrics is 7,200 buckets). Same numbers as :class:`Bucket`.
    """

    metric: str
    bucket_seconds: int
    bucket_start: npt.NDArray[np.float64]
    count: npt.NDArray[np.int64]
    min: npt.NDArray[np.float64]
    max: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    stddev: npt.NDArray[np.float64]
    p50: npt.NDArray[np.float64]
    p95: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    exact_percentiles: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.bucket_start)


def check_bucket_sizes(bucket_seconds: int, source_window_seconds: int) -> None:
    """ValueError unless both are positive and buckets are whole multiples of the windows."""
    if bucket_seconds <= 0 or source_window_seconds <= 0:
        raise ValueError("bucket and window sizes must be positive")
    if bucket_seconds % source_window_seconds:
        raise ValueError("bucket_seconds must be a multiple of source_window_seconds")


#: Ranges up to this long are summarised from the finest stored window size; longer ones from
#: the coarsest (a 60th of the rows for 1-minute windows against 1-second ones; the edge windows
#: it blurs matter little over hours).
FINE_RANGE_SECONDS = 6 * 3600


def window_size_for_range(sizes: Sequence[int], start: float, end: float) -> int | None:
    """Which stored window size serves fleet figures over [start, end) (None: none stored)."""
    if not sizes:
        return None
    return min(sizes) if end - start <= FINE_RANGE_SECONDS else max(sizes)


#: Bucket's numeric columns, in field order.
BUCKET_COLUMNS = ("bucket_start", "count", "min", "max", "mean", "stddev", "p50", "p95", "last")


def buckets_from_series(device_id: str, series: Sequence[BucketSeries]) -> list[Bucket]:
    """The row form of :class:`BucketSeries` (ordered by metric then bucket start)."""
    out: list[Bucket] = []
    for s in series:
        cols = [getattr(s, c).tolist() for c in BUCKET_COLUMNS]
        exact = s.exact_percentiles.tolist()
        out.extend(
            Bucket(device_id, s.metric, t, s.bucket_seconds, n, lo, hi, m, sd, a, b, last, x)
            for t, n, lo, hi, m, sd, a, b, last, x in zip(*cols, exact, strict=True)
        )
    return out


def series_from_buckets(buckets: Sequence[Bucket], bucket_seconds: int) -> list[BucketSeries]:
    """Group row-form buckets (ordered by metric then start) into one series per metric."""
    groups: dict[str, list[Bucket]] = {}
    for b in buckets:
        groups.setdefault(b.metric, []).append(b)
    out = []
    for metric, group in groups.items():
        cols: dict[str, npt.NDArray[Any]] = {
            c: np.fromiter((getattr(b, c) for b in group), np.int64 if c == "count" else np.float64)
            for c in BUCKET_COLUMNS
        }
        exact = np.fromiter((b.exact_percentiles for b in group), np.bool_, len(group))
        out.append(BucketSeries(metric, bucket_seconds, **cols, exact_percentiles=exact))
    return out


@dataclass(frozen=True, slots=True)
class MetricSummary:
    metric: str
    count: int
    min: float
    max: float
    mean: float


@dataclass(frozen=True, slots=True)
class FleetSummary:
    start: float
    end: float
    devices_reporting: int
    readings: int
    readings_per_second: float
    metrics: list[MetricSummary] = field(default_factory=list)
    alerts_by_severity: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceRules:
    """A device's alert rules as the agents keep them (survives an agent restart)."""

    device_id: str
    owner_id: str | None
    device_type: str | None
    config: dict[str, Any]
    version: int
    active: bool = True


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    owner_id: str
    url: str
    secret: str
    device_ids: list[str] | None
    min_severity: str
    rule_types: list[str] | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook delivery of one alert change to one subscription."""

    id: str  # also the idempotency key sent to the receiver
    subscription_id: str
    payload: dict[str, Any]
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    updated_at: float


#: Bytes of a refused message's payload kept for its owner: evidence of what was sent, not an
#: archive (the bridge refuses bodies over 256 KiB; a whole one per refusal would let one
#: misbehaving device fill the store).
DEADLETTER_PAYLOAD_BYTES = 1024


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A refused message as its device's owner sees it (from ``telemetry.deadletter``).

    ``id`` is where it was read (``topic/partition/offset``), so a replay stores it once.
    ``payload`` is the message's first :data:`DEADLETTER_PAYLOAD_BYTES` bytes as text (UTF-8,
    undecodable bytes replaced); ``payload_truncated`` says whether anything was cut, here or
    by the stage that refused it.
    """

    id: str
    device_id: str
    ts: float
    reason: str
    source: str
    detail: str | None
    payload: str
    payload_truncated: bool


def deadletter_record(dl: DeadLetter, *, id: str) -> DeadLetterRecord | None:
    """What the store keeps of dead letter ``dl`` read at ``id`` (None: no device to show
    it to, e.g. a message on a topic that names none)."""
    if not dl.device_id:
        return None
    cut = dl.payload[:DEADLETTER_PAYLOAD_BYTES]
    return DeadLetterRecord(
        id=id,
        device_id=_text(dl.device_id),
        ts=dl.ts,
        reason=_text(dl.reason),
        source=_text(dl.source),
        detail=_text(dl.detail) if dl.detail is not None else None,
        payload=_text(cut.decode("utf-8", "replace")),
        payload_truncated=len(cut) < len(dl.payload) or "truncated" in (dl.detail or ""),
    )


def _text(s: str) -> str:
    # Refused messages are often refused for a NUL (PostgreSQL text cannot hold one): the
    # store keeps them with a replacement character rather than refusing them again.
    return s.replace("\x00", "\ufffd")


class MonitoringStore(Protocol):
    """What the agents and the API need from the monitoring store."""

    async def start(self) -> None:
        """Connect; a store whose schema is behind is migrated first (see ``migrate``)."""

    async def close(self) -> None: ...

    async def schema_version(self) -> str:
        """The schema version the store is at (an Alembic revision on PostgreSQL, the newest
        recorded migration on MongoDB)."""

    # -- writes (stream agents) -------------------------------------------------------------
    async def upsert_windows(self, windows: Sequence[WindowStats]) -> None: ...

    async def insert_samples(self, batch: SampleBatch) -> None: ...

    async def rebuild_rollups(self) -> None:
        """Recompute what the store derives from its windows, after windows were loaded by
        other means than :meth:`upsert_windows` (a bulk load). PostgreSQL rebuilds its hourly
        rollups; MongoDB derives nothing (it aggregates windows at query time)."""

    async def upsert_alerts(self, alerts: Sequence[Alert]) -> None: ...

    async def upsert_device_rules(self, rules: Sequence[DeviceRules]) -> None: ...

    async def load_device_rules(self) -> list[DeviceRules]: ...

    async def delete_samples_before(self, ts: float) -> int: ...

    async def delete_windows_before(self, ts: float, *, window_seconds: int | None = None) -> int:
        """Retention for windows: drop those starting before ``ts`` (of one size, or all)."""

    # -- reads (monitoring API) -------------------------------------------------------------
    async def query_samples(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start: float,
        end: float,
        limit: int = 10_000,
    ) -> list[Sample]:
        """Samples with ``start <= ts < end``, oldest first (ts, seq, metric); a replayed
        reading appears once."""

    async def recent_samples(
        self,
        *,
        device_ids: Sequence[str] | None,
        metric: str | None = None,
        since: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Sample]:
        """Newest samples first across ``device_ids`` (None = all devices; [] = none)."""

    async def latest_values(self, *, device_ids: Sequence[str]) -> list[Sample]:
        """The newest reading of every metric of each of ``device_ids`` that the stored windows
        saw (a window's ``last`` at its ``last_ts``; ``seq`` is None), ordered by device then
        metric; kept current by :meth:`upsert_windows` (so also with raw samples off), dropped
        when :meth:`delete_windows_before` drops windows of every size before it."""

    async def rank_by_latest(
        self,
        *,
        metric: str,
        device_ids: Sequence[str],
        descending: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[str]:
        """``device_ids`` ordered by the latest value of ``metric`` (see :meth:`latest_values`),
        then the page ``[offset, offset + limit)`` of that order.

        Devices without a value of ``metric`` come after every device with one, in either
        direction; among those, and among devices of equal value, the order given is kept, so
        the order is total and pages neither repeat nor skip a device (a device named twice
        counts once, where first named)."""

    async def query_windows(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        window_seconds: int,
        start: float,
        end: float,
    ) -> list[WindowStats]:
        """Windows with ``start <= window_start < end``, ordered by metric then start."""

    async def aggregate_windows(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start: float,
        end: float,
        bucket_seconds: int,
        source_window_seconds: int,
    ) -> list[Bucket]:
        """Stored windows of ``source_window_seconds`` starting in [start, end), merged into
        epoch-aligned (UTC) buckets of ``bucket_seconds`` (a multiple of the source size, else
        ValueError); ordered by metric then bucket start. See :class:`Bucket`."""

    async def aggregate_window_series(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start: float,
        end: float,
        bucket_seconds: int,
        source_window_seconds: int,
    ) -> list[BucketSeries]:
        """:meth:`aggregate_windows` in columnar form: one :class:`BucketSeries` per metric
        that has data, ordered by metric."""

    async def fleet_summary(
        self, *, device_ids: Sequence[str] | None, start: float, end: float
    ) -> FleetSummary:
        """Fleet figures from windows starting in [start, end) and alerts started in it.

        ``readings`` counts a reading of several metrics once (per device and window, the
        largest count among its metrics)."""

    async def query_alerts(
        self,
        *,
        device_ids: Sequence[str] | None = None,
        status: str | None = None,
        min_severity: str | None = None,
        start: float | None = None,
        end: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Alert]:
        """Alerts newest first (by started_at); ``start``/``end`` bound started_at, end
        exclusive; ``min_severity`` keeps that severity and above (ValueError if unknown)."""

    async def get_alert(self, alert_id: str) -> Alert | None: ...

    async def transition_alert(
        self, alert_id: str, *, status: str, by: str | None, at: float
    ) -> Alert | None:
        """Move an alert to acknowledged/cleared; returns the new state, None if unknown.

        active → acknowledged → cleared, or active → cleared. Asking for the current status
        returns the alert unchanged; moving backwards raises :class:`AlertTransitionError`.
        Alert upserts never move a status backwards either (an agent's "still active" update
        keeps a user's acknowledgement)."""

    # -- alert subscriptions and webhook deliveries (monitoring API) -------------------------
    async def create_subscription(self, sub: Subscription) -> None: ...

    async def list_subscriptions(self, *, owner_id: str | None) -> list[Subscription]: ...

    async def get_subscription(self, sub_id: str) -> Subscription | None: ...

    async def delete_subscription(self, sub_id: str, *, owner_id: str | None) -> bool: ...

    async def enqueue_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Insert deliveries; a delivery id already present is left as it is (idempotent)."""

    async def due_deliveries(
        self,
        *,
        now: float,
        limit: int,
        lease_seconds: float = 0.0,
        exclude_subscriptions: Sequence[str] = (),
    ) -> list[Delivery]:
        """Pending deliveries due at ``now``; with ``lease_seconds`` > 0 they are also claimed
        atomically (pushed ``lease_seconds`` out), so concurrent workers never share one.
        Deliveries of ``exclude_subscriptions`` are left for later (a worker skips receivers
        that already have their share of its connections)."""

    async def update_delivery(self, delivery: Delivery) -> None: ...

    async def list_deliveries(
        self, *, subscription_id: str, status: str | None = None, limit: int = 100
    ) -> list[Delivery]: ...

    # -- refused readings (written from telemetry.deadletter, read by the monitoring API) -----
    async def insert_deadletters(self, records: Sequence[DeadLetterRecord]) -> None:
        """Store refused messages; an id already stored is left as it is (idempotent)."""

    async def query_deadletters(
        self,
        *,
        device_ids: Sequence[str] | None,
        reason: str | None = None,
        before: float | None = None,
        after: tuple[float, str] | None = None,
        limit: int = 100,
    ) -> list[DeadLetterRecord]:
        """Refused messages newest first (by ts, then id); ``before`` bounds ts (exclusive);
        ``after`` = the (ts, id) of the previous page's last record: the page goes on strictly
        after it in that order (exact, and no record sharing a ts is skipped);
        ``device_ids`` None = every device, [] = none."""

    async def deadletter_counts(
        self, *, device_ids: Sequence[str] | None, start: float, end: float
    ) -> dict[str, int]:
        """Refused messages per reason with ``start <= ts < end``."""

    async def delete_deadletters_before(self, ts: float) -> int:
        """Retention for refused messages: drop those refused before ``ts``; returns how many."""
