"""Bulk decoding of ``telemetry.raw`` records into columnar rows.

One msgspec decode per record, then a per-reading (not per-value) loop: the series ids of a
device's metric set are cached, so a reading costs a tuple and a dict lookup whatever its
number of metrics. Anything that does not decode or validate is returned as a dead letter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Protocol, cast

import msgspec
import numpy as np
import numpy.typing as npt

from iot_common.telemetry import DeadLetterReason
from stream_agents.windows import Rows


class RecordLike(Protocol):
    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def key(self) -> bytes | None: ...


class DecodedReading(msgspec.Struct, array_like=True, gc=False):
    """``iot_common.telemetry.Reading`` as the hot path decodes it (not tracked by the GC:
    millions of these live for one batch and hold no cycles)."""

    ts: float
    metrics: dict[str, float]
    seq: int | None = None


class DecodedEnvelope(msgspec.Struct, gc=False):
    """``iot_common.telemetry.TelemetryEnvelope`` (same JSON), GC-untracked."""

    device_id: str
    source: str
    ingest_ts: float
    readings: list[DecodedReading]


envelope_decoder = msgspec.json.Decoder(DecodedEnvelope)


class SeriesTable:
    """Dense integer ids for device × metric series (shared by all partitions of a worker)."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str], int] = {}
        self.device: list[str] = []
        self.metric: list[str] = []
        self._by_shape: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        self._dev_arr: npt.NDArray[np.object_] = np.empty(0, object)
        self._met_arr: npt.NDArray[np.object_] = np.empty(0, object)

    def __len__(self) -> int:
        return len(self.device)

    def series_id(self, device_id: str, metric: str) -> int:
        key = (device_id, metric)
        sid = self.ids.get(key)
        if sid is None:
            sid = len(self.device)
            self.ids[key] = sid
            self.device.append(device_id)
            self.metric.append(metric)
        return sid

    def shape(self, device_id: str, names: tuple[str, ...]) -> list[int]:
        """Series ids of a device's metric set, in the order of ``names``."""
        key = (device_id, names)
        ids = self._by_shape.get(key)
        if ids is None:
            if len(self._by_shape) > 1_000_000:
                self._by_shape.clear()
            ids = [self.series_id(device_id, n) for n in names]
            self._by_shape[key] = ids
        return ids

    def shapes(self, keys: Sequence[tuple[str, tuple[str, ...]]]) -> list[list[int]]:
        """:meth:`shape` of many (device id, metric names) keys, one dict lookup each when
        all are known (the usual case)."""
        cached = self._by_shape.get
        found = [cached(k) for k in keys]
        if None in found:
            return [ids or self.shape(*k) for ids, k in zip(found, keys, strict=True)]
        return cast(list[list[int]], found)

    def arrays(self) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.object_]]:
        """Device and metric name per series id (object arrays, for fancy indexing)."""
        if len(self._dev_arr) != len(self.device):
            self._dev_arr = np.array(self.device, dtype=object)
            self._met_arr = np.array(self.metric, dtype=object)
        return self._dev_arr, self._met_arr


@dataclass(slots=True)
class BadRecord:
    offset: int
    payload: bytes
    reason: str
    detail: str
    device_id: str | None = None


@dataclass(slots=True)
class DecodedBatch:
    """Rows of one partition's batch plus what is needed to dead-letter late readings."""

    rows: Rows
    ingest_ts: npt.NDArray[np.float64]
    seq: npt.NDArray[np.int64]
    #: Index into ``readings`` per row.
    reading: npt.NDArray[np.int64]
    #: (envelope, reading) per reading, for dead-lettering late ones.
    readings: list[tuple[DecodedEnvelope, DecodedReading]] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    records: int = 0
    max_ingest_ts: float = float("-inf")
    last_offset: int = -1


_batch_decoder = msgspec.json.Decoder(list[DecodedEnvelope])

#: How JSON writes a NUL character. PostgreSQL text cannot hold one: a device id or metric
#: name with it would make every store write of its batch fail, for good.
_NUL = b"\\u0000"
_NUL_DETAIL = "NUL character in the device id or a metric name"


def _has_nul(env: DecodedEnvelope) -> bool:
    return "\0" in env.device_id or any("\0" in m for r in env.readings for m in r.metrics)


def _decode_each(
    records: Sequence[Any],
) -> tuple[list[DecodedEnvelope], list[int], list[BadRecord]]:
    envs: list[DecodedEnvelope] = []
    offs: list[int] = []
    bad: list[BadRecord] = []
    decode = envelope_decoder.decode
    for rec in records:
        raw = rec.value
        o = rec.offset
        if not raw:
            bad.append(BadRecord(o, b"", DeadLetterReason.UNDECODABLE, "empty record"))
            continue
        try:
            env = decode(raw)
        except msgspec.ValidationError as exc:
            bad.append(BadRecord(o, raw, DeadLetterReason.INVALID_SCHEMA, str(exc)[:500]))
            continue
        except msgspec.DecodeError as exc:
            bad.append(BadRecord(o, raw, DeadLetterReason.UNDECODABLE, str(exc)[:500]))
            continue
        if not env.device_id or env.ingest_ts != env.ingest_ts:
            bad.append(BadRecord(o, raw, DeadLetterReason.INVALID_SCHEMA, "empty device_id"))
            continue
        if _NUL in raw and _has_nul(env):
            device = None if "\0" in env.device_id else env.device_id
            bad.append(BadRecord(o, raw, DeadLetterReason.INVALID_SCHEMA, _NUL_DETAIL, device))
            continue
        envs.append(env)
        offs.append(o)
    return envs, offs, bad


def decode_records(records: Sequence[Any], table: SeriesTable) -> DecodedBatch:
    """Decode one partition's records (offset order) into rows; bad ones become dead letters.

    The whole batch is decoded by one msgspec call (the records' JSON joined into an array);
    only when that fails are records decoded one by one to find the bad ones. The rest is
    list comprehensions and numpy, one step per reading rather than per value.
    """
    envs: list[DecodedEnvelope]
    bad: list[BadRecord] = []
    values = [r.value for r in records]
    try:
        if any(not v for v in values):
            raise msgspec.DecodeError("empty record")
        joined = b"[" + b",".join(values) + b"]"
        envs = _batch_decoder.decode(joined)
        offs = [r.offset for r in records]
        if not all(e.device_id and e.ingest_ts == e.ingest_ts for e in envs):
            raise msgspec.ValidationError("empty device_id")
        if _NUL in joined and any(map(_has_nul, envs)):
            raise msgspec.ValidationError(_NUL_DETAIL)
    except (msgspec.DecodeError, msgspec.ValidationError):
        envs, offs, bad = _decode_each(records)
    per_env = [len(e.readings) for e in envs]
    readings = [(e, r) for e in envs for r in e.readings]
    metrics = [r.metrics for _, r in readings]
    shape_keys = [(e.device_id, tuple(m)) for (e, _), m in zip(readings, metrics, strict=True)]
    idlists = table.shapes(shape_keys)
    n_metrics = np.fromiter(map(len, metrics), np.int64, len(metrics))
    total = int(n_metrics.sum())
    ser = np.fromiter(chain.from_iterable(idlists), np.int64, total)
    val = np.fromiter(chain.from_iterable(map(dict.values, metrics)), np.float64, total)
    ts_r = np.fromiter((r.ts for _, r in readings), np.float64, len(readings))
    seq_r = np.fromiter(
        (-1 if r.seq is None else r.seq for _, r in readings), np.int64, len(readings)
    )
    per_env_a = np.array(per_env, dtype=np.int64)
    off_r = np.repeat(np.array(offs, dtype=np.int64), per_env_a)
    ing_e = np.fromiter((e.ingest_ts for e in envs), np.float64, len(envs))
    ing_r = np.repeat(ing_e, per_env_a)
    seq = np.repeat(seq_r, n_metrics)
    rows = Rows(
        ser,
        np.repeat(ts_r, n_metrics),
        val,
        np.repeat(off_r, n_metrics),
        seq,
    )
    out = DecodedBatch(
        rows=rows,
        ingest_ts=np.repeat(ing_r, n_metrics),
        seq=seq,
        reading=np.repeat(np.arange(len(readings), dtype=np.int64), n_metrics),
        readings=readings,
        bad=bad,
        records=len(records),
        max_ingest_ts=float(ing_e.max()) if len(ing_e) else float("-inf"),
        last_offset=records[-1].offset if records else -1,
    )
    finite = np.isfinite(rows.value) & np.isfinite(rows.ts)
    if not finite.all():
        _drop_non_finite(out, finite)
    return out


def _drop_non_finite(out: DecodedBatch, finite: npt.NDArray[np.bool_]) -> None:
    """Dead-letter every reading holding a non-finite number (JSON cannot carry them, but
    a producer other than the bridge might send 1e999)."""
    bad_readings = np.unique(out.reading[~finite])
    keep = ~np.isin(out.reading, bad_readings)
    for ri in bad_readings.tolist():
        env, r = out.readings[ri]
        payload = msgspec.json.encode(
            DecodedEnvelope(env.device_id, env.source, env.ingest_ts, [r])
        )
        out.bad.append(
            BadRecord(
                int(out.rows.offset[out.reading == ri][0]),
                payload,
                DeadLetterReason.NON_FINITE,
                "non-finite timestamp or metric value",
                env.device_id,
            )
        )
    out.rows = out.rows.take(keep)
    out.ingest_ts = out.ingest_ts[keep]
    out.seq = out.seq[keep]
    out.reading = out.reading[keep]
