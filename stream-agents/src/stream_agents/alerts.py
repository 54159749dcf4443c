"""Alert rules and alert lifecycle.

Rules come from each device's config (``device.events``), kept in the store so a restart does
not forget them, merged over a default rule set per device type. Evaluated on closed windows
(threshold above/below for N consecutive windows, rate of change of the mean between
consecutive windows) and on a timer (device silent for T seconds).

One open alert per (device, rule): ``active`` → ``acknowledged`` (by a user, through the
monitoring API, seen here on the ``alerts`` topic) → ``cleared`` (by the condition ending or
by a user). An acknowledged alert stays acknowledged while its condition holds; a user-cleared
alert whose condition still holds opens a new alert with a new ``started_at``. ``alert_id`` is
``uuid5(NAMESPACE_URL, f"{device_id}/{rule_id}/{started_at}")`` with ``started_at`` taken from
event time (window end), so replaying windows after a crash finds the same alert again.

Rule evaluation state survives a crash or a rebalance: it is kept as a short history per
(device, rule) of which closed windows hit (threshold) or their means (rate of change), keyed by
window start, rather than as running counters. Recording a window twice (a replay) changes
nothing, and a worker that starts or takes partitions over rebuilds the history from the last
stored windows (:meth:`AlertEngine.history_queries`, :meth:`AlertEngine.seed`), so "N
consecutive windows" counts windows closed before the crash too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import TypeAdapter, ValidationError

from iot_common.device_config import (
    AlertRule,
    DeviceConfig,
    RateOfChangeRule,
    SilentRule,
    ThresholdRule,
)
from iot_common.events import Alert, AlertStatus
from monitoring_store.base import DeviceRules

log = logging.getLogger(__name__)

#: Closed windows remembered per (device, rule) for evaluation (at least N + 1 for a
#: threshold over N consecutive windows).
HISTORY = 16

_rule_adapter: TypeAdapter[AlertRule] = TypeAdapter(AlertRule)
OPEN = (AlertStatus.ACTIVE, AlertStatus.ACKNOWLEDGED)


def alert_id(device_id: str, rule_id: str, started_at: float) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{device_id}/{rule_id}/{started_at}"))


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """What rule evaluation needs of a closed window."""

    device_id: str
    metric: str
    window_seconds: int
    window_start: float
    stats: Mapping[str, float]


#: The window statistics a rule can refer to (``ThresholdRule.aggregate``): what a
#: :class:`ClosedWindow` carries.
AGGREGATES: tuple[str, ...] = get_args(ThresholdRule.model_fields["aggregate"].annotation)


def closed_windows(
    device_ids: Iterable[str],
    metrics: Iterable[str],
    window_seconds: Iterable[int],
    window_starts: Iterable[float],
    stats: Mapping[str, Iterable[float]],
) -> list[ClosedWindow]:
    """Closed windows from parallel columns, ``stats`` holding one column per aggregate."""
    values = zip(*(stats[a] for a in AGGREGATES), strict=True)
    return [
        ClosedWindow(d, m, ws, st, dict(zip(AGGREGATES, v, strict=True)))
        for d, m, ws, st, v in zip(
            device_ids, metrics, window_seconds, window_starts, values, strict=True
        )
    ]


def parse_rules(raw: Iterable[Mapping[str, Any]]) -> list[AlertRule]:
    out: list[AlertRule] = []
    for r in raw:
        try:
            out.append(_rule_adapter.validate_python(r))
        except ValidationError as exc:
            log.warning("ignoring invalid default rule %r: %s", r, exc)
    return out


@dataclass
class _DeviceState:
    rules: list[AlertRule]
    owner_id: str | None
    #: (metric, window_seconds) -> rules evaluated on such windows
    by_window: dict[tuple[str, int], list[ThresholdRule | RateOfChangeRule]]
    silent: list[SilentRule]


@dataclass
class AlertEngine:
    """Alert state of one worker (all devices it processes)."""

    default_rules: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    devices: dict[str, _DeviceState] = field(default_factory=dict)
    open: dict[tuple[str, str], Alert] = field(default_factory=dict)
    #: (device, rule) -> {window_start: threshold hit}
    hits: dict[tuple[str, str], dict[float, bool]] = field(default_factory=dict)
    last_evaluated: dict[tuple[str, str], float] = field(default_factory=dict)
    #: (device, metric, window_seconds) -> {window_start: mean}
    means: dict[tuple[str, str, int], dict[float, float]] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._defaults = {k: parse_rules(v) for k, v in self.default_rules.items()}

    # -- rules -------------------------------------------------------------------------------
    def effective_rules(
        self, device_type: str | None, config: Mapping[str, Any]
    ) -> list[AlertRule]:
        merged: dict[str, AlertRule] = {}
        for r in self._defaults.get("*", []):
            merged[r.id] = r
        for r in self._defaults.get(device_type or "", []):
            merged[r.id] = r
        try:
            own = DeviceConfig.model_validate(config or {}).rules
        except ValidationError as exc:
            log.warning("device config with invalid rules ignored: %s", exc)
            own = []
        for r in own:
            merged[r.id] = r
        return list(merged.values())

    def set_device(self, dr: DeviceRules, *, now: float) -> None:
        if not dr.active:
            self.devices.pop(dr.device_id, None)
            return
        rules = self.effective_rules(dr.device_type, dr.config)
        by_window: dict[tuple[str, int], list[ThresholdRule | RateOfChangeRule]] = {}
        silent: list[SilentRule] = []
        for r in rules:
            if isinstance(r, SilentRule):
                silent.append(r)
            else:
                by_window.setdefault((r.metric, r.window_seconds), []).append(r)
        self.devices[dr.device_id] = _DeviceState(rules, dr.owner_id, by_window, silent)
        self.last_seen.setdefault(dr.device_id, now)
        # Rules that no longer exist cannot keep an alert open.
        ids = {r.id for r in rules}
        for key in [k for k in self.open if k[0] == dr.device_id and k[1] not in ids]:
            self.open.pop(key)

    def has_rules(self) -> bool:
        return bool(self.devices)

    # -- lifecycle ---------------------------------------------------------------------------
    def _fire(
        self,
        device_id: str,
        rule: AlertRule,
        *,
        at: float,
        message: str,
        metric: str | None,
        value: float | None,
        threshold: float | None,
    ) -> Alert | None:
        key = (device_id, rule.id)
        if key in self.open:
            return None
        st = self.devices.get(device_id)
        alert = Alert(
            alert_id=alert_id(device_id, rule.id, at),
            device_id=device_id,
            rule_id=rule.id,
            rule_type=rule.type,
            severity=str(rule.severity),
            status=AlertStatus.ACTIVE,
            message=message,
            started_at=at,
            updated_at=at,
            metric=metric,
            value=value,
            threshold=threshold,
            owner_id=st.owner_id if st else None,
        )
        self.open[key] = alert
        return alert

    def _clear(self, device_id: str, rule_id: str, *, at: float) -> Alert | None:
        cur = self.open.pop((device_id, rule_id), None)
        if cur is None:
            return None
        return _replace(
            cur,
            status=AlertStatus.CLEARED,
            cleared_at=at,
            updated_at=max(at, cur.updated_at),
        )

    def on_windows(self, windows: Iterable[ClosedWindow]) -> list[Alert]:
        """Evaluate window rules on closed windows (any order; each window once)."""
        changes: list[Alert] = []
        devices = self.devices
        todo = [w for w in windows if w.device_id in devices]
        todo.sort(key=lambda w: w.window_start)
        for w in todo:
            st = devices[w.device_id]
            rules = st.by_window.get((w.metric, w.window_seconds))
            if not rules:
                continue
            end = w.window_start + w.window_seconds
            for rule in rules:
                key = (w.device_id, rule.id)
                if self.last_evaluated.get(key, float("-inf")) >= w.window_start:
                    continue
                self.last_evaluated[key] = w.window_start
                change = self._evaluate(rule, w, end)
                if change is not None:
                    changes.append(change)
        return changes

    # -- evaluation history -----------------------------------------------------------------
    def _record(self, rule: ThresholdRule | RateOfChangeRule, w: ClosedWindow) -> None:
        """Remember what ``rule`` needs of window ``w`` (idempotent)."""
        if isinstance(rule, ThresholdRule):
            value = w.stats[rule.aggregate]
            hit = value > rule.value if rule.op == "above" else value < rule.value
            _put(
                self.hits.setdefault((w.device_id, rule.id), {}),
                w.window_start,
                hit,
                max(HISTORY, rule.consecutive_windows + 1),
            )
        else:
            _put(
                self.means.setdefault((w.device_id, w.metric, w.window_seconds), {}),
                w.window_start,
                w.stats["mean"],
                HISTORY,
            )

    def history_queries(self, owned: Any = None) -> list[tuple[str, str, int, int]]:
        """(device, metric, window_seconds, windows wanted) whose stored windows rebuild the
        evaluation history of window rules; ``owned(device_id)`` filters devices."""
        out: dict[tuple[str, str, int], int] = {}
        for dev, st in self.devices.items():
            if not st.by_window or (owned is not None and not owned(dev)):
                continue
            for (metric, size), rules in st.by_window.items():
                need = max(
                    r.consecutive_windows if isinstance(r, ThresholdRule) else 1 for r in rules
                )
                k = (dev, metric, size)
                out[k] = max(out.get(k, 0), need)
        return [(d, m, s, n) for (d, m, s), n in out.items()]

    def seed(self, windows: Iterable[ClosedWindow]) -> None:
        """Rebuild the evaluation history from stored closed windows (no alert changes)."""
        for w in windows:
            st = self.devices.get(w.device_id)
            if st is None:
                continue
            for rule in st.by_window.get((w.metric, w.window_seconds), ()):
                self._record(rule, w)

    def _evaluate(
        self, rule: ThresholdRule | RateOfChangeRule, w: ClosedWindow, end: float
    ) -> Alert | None:
        self._record(rule, w)
        if isinstance(rule, ThresholdRule):
            value = w.stats[rule.aggregate]
            hit = value > rule.value if rule.op == "above" else value < rule.value
            if not hit:
                return self._clear(w.device_id, rule.id, at=end)
            # this window and the consecutive hits among the remembered ones before it
            hits = self.hits[(w.device_id, rule.id)]
            n = 1
            for start in sorted((s for s in hits if s < w.window_start), reverse=True):
                if not hits[start]:
                    break
                n += 1
            if n < rule.consecutive_windows:
                return None
            return self._fire(
                w.device_id,
                rule,
                at=end,
                message=(
                    f"{w.metric} {rule.aggregate} {value:g} {rule.op} {rule.value:g} "
                    f"for {n} consecutive {rule.window_seconds}s windows"
                ),
                metric=w.metric,
                value=value,
                threshold=rule.value,
            )
        means = self.means[(w.device_id, w.metric, w.window_seconds)]
        mean = w.stats["mean"]
        earlier = [s for s in means if s < w.window_start]
        if not earlier:
            return None
        prev = max(earlier)
        rate = abs(mean - means[prev]) / (w.window_start - prev)
        if rate <= rule.max_change_per_second:
            return self._clear(w.device_id, rule.id, at=end)
        return self._fire(
            w.device_id,
            rule,
            at=end,
            message=(
                f"{w.metric} mean changed {rate:g}/s between windows "
                f"(limit {rule.max_change_per_second:g}/s)"
            ),
            metric=w.metric,
            value=rate,
            threshold=rule.max_change_per_second,
        )

    def seen(self, device_id: str, at: float) -> Alert | None:
        """A device sent something: remember when, clear its silent alerts."""
        if at > self.last_seen.get(device_id, float("-inf")):
            self.last_seen[device_id] = at
        st = self.devices.get(device_id)
        if st is None or not st.silent:
            return None
        for rule in st.silent:
            cur = self.open.get((device_id, rule.id))
            if cur is not None and at > cur.started_at:
                return self._clear(device_id, rule.id, at=at)
        return None

    def check_silent(self, now: float, owned: Any = None) -> list[Alert]:
        """Fire silent rules; ``owned(device_id)`` says whether this worker answers for it."""
        changes: list[Alert] = []
        for dev, st in self.devices.items():
            if not st.silent or (owned is not None and not owned(dev)):
                continue
            seen = self.last_seen.get(dev)
            if seen is None:
                self.last_seen[dev] = now
                continue
            for rule in st.silent:
                if now - seen > rule.seconds:
                    a = self._fire(
                        dev,
                        rule,
                        at=round(seen + rule.seconds, 3),
                        message=f"no data for {now - seen:.0f}s (limit {rule.seconds:g}s)",
                        metric=None,
                        value=now - seen,
                        threshold=rule.seconds,
                    )
                    if a is not None:
                        changes.append(a)
        return changes

    def apply_external(self, a: Alert) -> None:
        """A state change seen on the ``alerts`` topic (a user's ack/clear, or our own echo)."""
        key = (a.device_id, a.rule_id)
        cur = self.open.get(key)
        if cur is None or cur.alert_id != a.alert_id:
            return
        if a.status == AlertStatus.ACKNOWLEDGED and cur.status == AlertStatus.ACTIVE:
            self.open[key] = a
        elif a.status == AlertStatus.CLEARED:
            self.open.pop(key, None)

    def hydrate(self, alerts: Iterable[Alert]) -> None:
        for a in alerts:
            if a.status in OPEN:
                self.open[(a.device_id, a.rule_id)] = a


def _put(hist: dict[float, Any], start: float, value: Any, limit: int) -> None:
    hist[start] = value
    while len(hist) > limit:
        del hist[min(hist)]


def _replace(a: Alert, **changes: Any) -> Alert:
    data = {f: getattr(a, f) for f in a.__struct_fields__}
    data.update(changes)
    return Alert(**data)
