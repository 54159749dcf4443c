"""Bulk decoding of ``telemetry.raw`` records into columnar rows.

One msgspec decode per record, then a per-reading (not per-value) loop: the series ids of a
device's metric set are cached, so a reading costs a tuple and a dict lookup whatever its
number of metrics. Anything that does not decode or validate is returned as a dead letter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from iot_common.telemetry import DeadLetterReason, Reading, TelemetryEnvelope, envelope_decoder
from stream_agents.windows import Rows


class RecordLike(Protocol):
    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def key(self) -> bytes | None: ...


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
        key = (device_id, names)
        ids = self._by_shape.get(key)
        if ids is None:
            if len(self._by_shape) > 1_000_000:
                self._by_shape.clear()
            ids = [self.series_id(device_id, n) for n in names]
            self._by_shape[key] = ids
        return ids

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
    readings: list[tuple[TelemetryEnvelope, Reading]] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    records: int = 0
    max_ingest_ts: float = float("-inf")
    last_offset: int = -1


def decode_records(records: Sequence[Any], table: SeriesTable) -> DecodedBatch:
    """Decode one partition's records (offset order) into rows; bad ones become dead letters."""
    ser: list[int] = []
    ts: list[float] = []
    val: list[float] = []
    off: list[int] = []
    ing: list[float] = []
    seq: list[int] = []
    rix: list[int] = []
    readings: list[tuple[TelemetryEnvelope, Reading]] = []
    bad: list[BadRecord] = []
    max_ing = float("-inf")
    decode = envelope_decoder.decode
    shape = table.shape
    for rec in records:
        raw = rec.value
        o = rec.offset
        if raw is None:
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
        dev = env.device_id
        it = env.ingest_ts
        if not dev or it != it:
            bad.append(BadRecord(o, raw, DeadLetterReason.INVALID_SCHEMA, "empty device_id"))
            continue
        if it > max_ing:
            max_ing = it
        for r in env.readings:
            m = r.metrics
            n = len(m)
            if not n:
                continue
            ids = shape(dev, tuple(m))
            ser.extend(ids)
            val.extend(m.values())
            t = r.ts
            s = -1 if r.seq is None else r.seq
            ri = len(readings)
            readings.append((env, r))
            if n == 1:
                ts.append(t)
                off.append(o)
                ing.append(it)
                seq.append(s)
                rix.append(ri)
            else:
                ts.extend([t] * n)
                off.extend([o] * n)
                ing.extend([it] * n)
                seq.extend([s] * n)
                rix.extend([ri] * n)
    rows = Rows(
        np.array(ser, dtype=np.int64),
        np.array(ts, dtype=np.float64),
        np.array(val, dtype=np.float64),
        np.array(off, dtype=np.int64),
    )
    out = DecodedBatch(
        rows=rows,
        ingest_ts=np.array(ing, dtype=np.float64),
        seq=np.array(seq, dtype=np.int64),
        reading=np.array(rix, dtype=np.int64),
        readings=readings,
        bad=bad,
        records=len(records),
        max_ingest_ts=max_ing,
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
            TelemetryEnvelope(env.device_id, env.source, env.ingest_ts, [r])
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
