"""The ledger: a record of every reading the simulator sent, so a checker can prove delivery.

A ledger is a directory::

    manifest.json      run id, fleet, seed, transport, device ids (index → id), metric names
    shard-0000.bin     fixed-size binary records (``RECORD_DTYPE``), one per reading or
    shard-0001.bin     injected fault message, appended in chunks by each publishing process

A record says which device (index into the manifest's ``devices``; -1 for an unknown-device
fault), which ``seq`` and ``ts``, how many data points, a digest of the values and which fault
(if any) was injected. The digest is order-independent over (metric, value) pairs, so a checker
can recompute it from stored raw samples and compare.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

RECORD_DTYPE = np.dtype(
    [
        ("msg", "<i8"),  # message index within the shard
        ("device", "<i4"),  # index into manifest["devices"], -1 = unknown device
        ("fault", "u1"),  # Fault
        ("points", "u1"),  # metrics in the reading
        ("seq", "<i8"),
        ("ts", "<f8"),
        ("digest", "<u8"),
    ]
)
MANIFEST = "manifest.json"


class Fault(IntEnum):
    """What was injected into a message; each has an expected outcome in the pipeline."""

    NONE = 0
    OUT_OF_ORDER = 1  # stored once
    DUPLICATE = 2  # sent twice, stored once
    LATE = 3  # dead-lettered (late / too_old)
    MALFORMED_JSON = 4  # dead-lettered not_json
    MALFORMED_SCHEMA = 5  # dead-lettered invalid_schema
    MALFORMED_NON_NUMERIC = 6  # dead-lettered non_numeric_metric (or invalid_schema)
    MALFORMED_NO_METRICS = 7  # dead-lettered missing_metrics (or invalid_schema)
    UNKNOWN_DEVICE = 8  # dead-lettered unknown_device

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def expect_stored(self) -> bool:
        return self in (Fault.NONE, Fault.OUT_OF_ORDER, Fault.DUPLICATE)


MALFORMED = (
    Fault.MALFORMED_JSON,
    Fault.MALFORMED_SCHEMA,
    Fault.MALFORMED_NON_NUMERIC,
    Fault.MALFORMED_NO_METRICS,
)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def metric_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def hash_pairs(
    values: npt.NDArray[np.float64], keys: npt.NDArray[np.uint64]
) -> npt.NDArray[np.uint64]:
    """Hash of each (metric key, value) pair, elementwise (broadcasting)."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)  # -0.0 → 0.0
    return _mix(bits ^ keys)


def digest_values(
    values: npt.NDArray[np.float64],
    present: npt.NDArray[np.bool_],
    keys: npt.NDArray[np.uint64],
) -> npt.NDArray[np.uint64]:
    """Digest per row of ``values (n, m)``: a wrapping sum of hash(metric, value) over present
    metrics. ``keys`` holds :func:`metric_key` of each column."""
    hashed = hash_pairs(values, keys[np.newaxis, :])
    hashed = np.where(present, hashed, np.uint64(0))
    with np.errstate(over="ignore"):
        return hashed.sum(axis=1, dtype=np.uint64)  # type: ignore[no-any-return]


def digest_pairs(metrics: list[str], values: list[float]) -> int:
    """Digest of one reading given as (metric, value) pairs (the checker's side)."""
    keys = np.array([metric_key(m) for m in metrics], dtype=np.uint64)
    vals = np.array(values, dtype=np.float64).reshape(1, -1)
    return int(digest_values(vals, np.ones_like(vals, dtype=np.bool_), keys)[0])


class LedgerWriter:
    """Appends records for one shard; buffered, flushed in chunks."""

    def __init__(self, directory: Path, shard: int, *, flush_every: int = 65_536) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"shard-{shard:04d}.bin"
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._chunks: list[npt.NDArray[Any]] = []
        self._pending = 0
        self._flush_every = flush_every
        self.records = 0

    def append(self, records: npt.NDArray[Any]) -> None:
        if len(records) == 0:
            return
        self._chunks.append(records)
        self._pending += len(records)
        self.records += len(records)
        if self._pending >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        if self._chunks:
            np.concatenate(self._chunks).tofile(self._fh)
            self._chunks.clear()
            self._pending = 0
        self._fh.flush()

    def close(self) -> None:
        self.flush()
        self._fh.close()


@dataclass
class Ledger:
    """A ledger read back: the manifest and every record of every shard."""

    directory: Path
    manifest: dict[str, Any]
    records: npt.NDArray[Any]
    shards: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))

    @property
    def devices(self) -> list[str]:
        return list(self.manifest["devices"])

    def fault_counts(self) -> dict[str, int]:
        kinds, counts = np.unique(self.records["fault"], return_counts=True)
        return {Fault(int(k)).label: int(c) for k, c in zip(kinds, counts, strict=True)}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(directory / MANIFEST)


def read_ledger(directory: Path | str) -> Ledger:
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    parts: list[npt.NDArray[Any]] = []
    shard_ids: list[npt.NDArray[np.int32]] = []
    for path in sorted(directory.glob("shard-*.bin")):
        recs = np.fromfile(path, dtype=RECORD_DTYPE)
        parts.append(recs)
        shard_ids.append(np.full(len(recs), int(path.stem.split("-")[1]), dtype=np.int32))
    records = np.concatenate(parts) if parts else np.zeros(0, dtype=RECORD_DTYPE)
    shards = np.concatenate(shard_ids) if shard_ids else np.zeros(0, dtype=np.int32)
    return Ledger(directory=directory, manifest=manifest, records=records, shards=shards)
