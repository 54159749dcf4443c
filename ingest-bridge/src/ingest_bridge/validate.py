"""Decode and validate device payloads in bulk into canonical readings.

The common case (a well-formed message whose readings are all good) costs one typed msgspec
decode plus a few checks per reading. Anything odd falls back to a slow path that splits the
message into its readings with their original bytes, so each bad reading is dead-lettered with
exactly what the device sent and a precise reason, while the good readings beside it go on.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from iot_common.telemetry import DeadLetterReason as R
from iot_common.telemetry import DeviceReading, Reading

_fast_decoder = msgspec.json.Decoder(DeviceReading | list[DeviceReading])
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_any_decoder = msgspec.json.Decoder()


@dataclass(slots=True)
class Reject:
    """One refused reading (or a whole refused message when ``index`` is None)."""

    reason: str
    detail: str
    payload: bytes
    index: int | None = None


@dataclass(slots=True)
class MessageResult:
    """What became of one upstream message."""

    readings: list[Reading] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    #: True when the message as a whole was refused (not JSON, too large, unknown device…).
    whole: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = 64 * 1024
    max_metrics: int = 64
    max_metric_name_length: int = 64
    max_future_seconds: float = 300.0
    max_age_seconds: float = 24 * 3600.0


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def refuse(reason: str, detail: str, payload: bytes) -> MessageResult:
    return MessageResult(rejects=[Reject(reason, detail, payload)], whole=True)


def parse_ts(value: Any) -> float:
    """Epoch seconds from a number or an RFC 3339 string (naive times are taken as UTC)."""
    if isinstance(value, bool) or value is None:
        raise _Bad(R.INVALID_SCHEMA, "ts must be epoch seconds or an RFC 3339 string")
    if isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise _Bad(R.INVALID_SCHEMA, f"unparseable ts {value[:40]!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = dt.timestamp()
    else:
        raise _Bad(R.INVALID_SCHEMA, "ts must be epoch seconds or an RFC 3339 string")
    if not math.isfinite(ts):
        raise _Bad(R.INVALID_SCHEMA, "ts is not finite")
    return ts


class Validator:
    """Turns raw payloads into readings; pure CPU, no I/O."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def validate(
        self, device_id: str, payload: bytes, *, now: float | None = None
    ) -> MessageResult:
        """Validate one message for ``device_id`` (a device already known to be active)."""
        lim = self.limits
        if now is None:
            now = time.time()
        if len(payload) > lim.max_payload_bytes:
            return refuse(R.TOO_LARGE, f"{len(payload)} bytes > {lim.max_payload_bytes}", payload)
        try:
            decoded = _fast_decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return self._slow(device_id, payload, now)
        items = decoded if isinstance(decoded, list) else [decoded]
        if not items:
            return refuse(R.INVALID_SCHEMA, "empty batch", payload)
        lo = now - lim.max_age_seconds
        hi = now + lim.max_future_seconds
        out: list[Reading] = []
        append = out.append
        isfinite = math.isfinite
        name_max = lim.max_metric_name_length
        for r in items:
            m = r.metrics
            if not m or len(m) > lim.max_metrics:
                return self._slow(device_id, payload, now)
            for k, v in m.items():
                if not isfinite(v) or not 0 < len(k) <= name_max:
                    return self._slow(device_id, payload, now)
            ts = r.ts
            if isinstance(ts, str):
                try:
                    ts = parse_ts(ts)
                except _Bad:
                    return self._slow(device_id, payload, now)
            if not lo <= ts <= hi:
                return self._slow(device_id, payload, now)
            if r.device_id is not None and r.device_id != device_id:
                return self._slow(device_id, payload, now)
            append(Reading(ts, m, r.seq))
        return MessageResult(readings=out)

    # -- slow path: exact reasons and the original bytes of each bad reading --

    def _slow(self, device_id: str, payload: bytes, now: float) -> MessageResult:
        elements: list[tuple[Any, bytes]]
        try:
            obj = _any_decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError):
            obj = _lenient_json(payload)
            if obj is _NOT_JSON:
                return refuse(R.NOT_JSON, "payload is not valid JSON", payload)
            if isinstance(obj, list):
                # Only the stdlib parser accepts NaN/Infinity; re-encode each element so its
                # dead letter carries that reading rather than the whole batch.
                elements = [(el, json.dumps(el).encode()) for el in obj]
            else:
                elements = [(obj, payload)]
        else:
            if isinstance(obj, list):
                raws = _raw_list_decoder.decode(payload)
                elements = [(el, bytes(raw)) for el, raw in zip(obj, raws, strict=True)]
            else:
                elements = [(obj, payload)]
        if not elements:
            return refuse(R.INVALID_SCHEMA, "empty batch", payload)
        result = MessageResult()
        for index, (el, raw) in enumerate(elements):
            try:
                result.readings.append(self._check(device_id, el, now))
            except _Bad as bad:
                result.rejects.append(Reject(bad.reason, bad.detail, raw, index))
        if not result.readings and len(elements) == 1:
            result.whole = True
            result.rejects[0].index = None
            result.rejects[0].payload = payload
        return result

    def _check(self, device_id: str, el: Any, now: float) -> Reading:
        lim = self.limits
        if not isinstance(el, dict):
            raise _Bad(R.INVALID_SCHEMA, "a reading must be a JSON object")
        claimed = el.get("device_id")
        if claimed is not None and claimed != device_id:
            raise _Bad(R.DEVICE_MISMATCH, f"payload names device {str(claimed)[:64]!r}")
        metrics = el.get("metrics")
        if metrics is None or metrics == {}:
            raise _Bad(R.MISSING_METRICS, "no metrics")
        if not isinstance(metrics, dict):
            raise _Bad(R.INVALID_SCHEMA, "metrics must be an object")
        if len(metrics) > lim.max_metrics:
            raise _Bad(R.TOO_MANY_METRICS, f"{len(metrics)} metrics > {lim.max_metrics}")
        clean: dict[str, float] = {}
        for name, value in metrics.items():
            if not name or len(name) > lim.max_metric_name_length:
                raise _Bad(R.INVALID_SCHEMA, "metric names must be 1-64 characters")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _Bad(R.NON_NUMERIC_METRIC, f"metric {name[:64]!r} is not a number")
            try:
                fvalue = float(value)
            except OverflowError:
                raise _Bad(R.NON_FINITE, f"metric {name[:64]!r} overflows a float") from None
            if not math.isfinite(fvalue):
                raise _Bad(R.NON_FINITE, f"metric {name[:64]!r} is {fvalue}")
            clean[name] = fvalue
        if "ts" not in el:
            raise _Bad(R.INVALID_SCHEMA, "missing ts")
        ts = parse_ts(el["ts"])
        if ts > now + lim.max_future_seconds:
            raise _Bad(R.FUTURE_TIMESTAMP, f"ts is {ts - now:.0f}s in the future")
        if ts < now - lim.max_age_seconds:
            raise _Bad(R.TOO_OLD, f"ts is {now - ts:.0f}s old")
        seq = el.get("seq")
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
            raise _Bad(R.INVALID_SCHEMA, "seq must be an integer")
        return Reading(ts, clean, seq)


_NOT_JSON = object()


def _lenient_json(payload: bytes) -> Any:
    """Parse JSON the way the stdlib does (accepting NaN/Infinity), or ``_NOT_JSON``."""
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _NOT_JSON
