"""The end-to-end loss check: the simulator's ledger against the store and the dead letters.

What it proves, per reading the simulator sent (``simulator.ledger``):

* every valid reading (including out-of-order and duplicated ones) is stored **exactly once**,
  with the same timestamp and the same values (the ledger's digest recomputed from the store);
* every injected fault is accounted for: malformed payloads and unknown devices are on
  ``telemetry.deadletter`` with the right reason (matched by the marker the simulator put in
  them), late readings are dead-lettered as ``late``/``too_old`` (or, when inside the allowed
  lateness after all, stored once — counted separately); over MQTT an unknown device's
  message never reaches the bridge: the broker refuses it (it goes out on another device's
  connection, and a device may publish only its own topic), and the simulator counts those
  refusals (PUBACK "Not authorized") — accounted as ``refused_at_broker``;
* nothing else was stored for the run's devices in the run's time range.

Usage: ``python -m benchmarks.e2e_check LEDGER_DIR --store-url … --kafka … --topic-prefix …``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from iot_common.settings import DEFAULT_DATABASE_URL
from iot_common.telemetry import DeadLetter, DeadLetterReason, deadletter_decoder
from iot_common.topics import Topics
from simulator.ledger import MALFORMED, Fault, Ledger, digest_values, metric_key, read_ledger

R = DeadLetterReason
#: Dead-letter reasons that account for each injected fault.
EXPECTED_REASONS: dict[Fault, set[str]] = {
    Fault.LATE: {R.LATE, R.TOO_OLD},
    Fault.MALFORMED_JSON: {R.NOT_JSON},
    Fault.MALFORMED_SCHEMA: {R.INVALID_SCHEMA},
    Fault.MALFORMED_NON_NUMERIC: {R.NON_NUMERIC_METRIC, R.INVALID_SCHEMA},
    Fault.MALFORMED_NO_METRICS: {R.MISSING_METRICS, R.INVALID_SCHEMA},
    # A message for an id the sender holds no credential for: over MQTT/HTTP the bridge finds
    # no such device; over AMQP it goes out on an account that may not write that device, and
    # the bridge refuses it before looking the id up (it never says whether an id exists).
    Fault.UNKNOWN_DEVICE: {R.UNKNOWN_DEVICE, R.UNAUTHORIZED},
}
_MARKER = re.compile(rb"sim:([0-9A-Za-z_-]+):(\d+):(\d+):(\d+)")
_any = msgspec.json.Decoder()


@dataclass
class StoredReadings:
    """Stored raw samples of the run's devices, one row per reading."""

    device: npt.NDArray[np.int64]  # ledger device index
    ts: npt.NDArray[np.float64]
    seq: npt.NDArray[np.int64]
    digest: npt.NDArray[np.uint64]
    points: npt.NDArray[np.int64]

    @classmethod
    def empty(cls) -> StoredReadings:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, np.zeros(0), z, np.zeros(0, dtype=np.uint64), z)


@dataclass
class CheckResult:
    ok: bool
    expected_readings: int
    expected_points: int
    stored_readings: int
    stored_points: int
    missing: int
    stored_twice: int
    wrong_values: int
    wrong_ts: int
    unexpected_stored: int
    faults: dict[str, dict[str, int]] = field(default_factory=dict)
    late_stored_inside_lateness: int = 0
    deadletters_seen: int = 0
    deadletters_unmatched: int = 0
    wrong_reason: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[Any]] = field(default_factory=dict)
    #: Seconds spent waiting for the store, reading it back, reading the dead letters.
    timings: dict[str, float] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        verdict = "**passed**" if self.ok else "**FAILED**"
        lines = [
            f"- loss check {verdict}: {self.stored_readings:,} of {self.expected_readings:,} "
            f"valid readings stored exactly once ({self.stored_points:,} data points); "
            f"missing {self.missing}, stored twice {self.stored_twice}, wrong values "
            f"{self.wrong_values}, wrong ts {self.wrong_ts}, unexpected {self.unexpected_stored}",
        ]
        if self.faults:
            parts = ", ".join(
                f"{k} {v['accounted']}/{v['injected']}"
                + (
                    f" ({v['refused_at_broker']} refused at the broker)"
                    if v.get("refused_at_broker")
                    else ""
                )
                for k, v in sorted(self.faults.items())
            )
            lines.append(f"- injected faults accounted for: {parts}")
        return lines


def _device_digest(
    metrics: Sequence[Sequence[str]], vals: Sequence[Sequence[float]]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """Digest and point count per stored reading (the ledger's digest, from the store's side).

    Readings are grouped by their metric names (a fleet has few distinct sets), so each group
    is one vectorised digest over an ``(n, k)`` value matrix."""
    n = len(metrics)
    counts = np.fromiter((len(m) for m in metrics), dtype=np.int64, count=n)
    out = np.zeros(n, dtype=np.uint64)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, names in enumerate(metrics):
        groups.setdefault(tuple(names), []).append(i)
    for names, rows in groups.items():
        if not names:
            continue
        keys = np.array([metric_key(m) for m in names], dtype=np.uint64)
        matrix = np.array([vals[i] for i in rows], dtype=np.float64).reshape(len(rows), -1)
        out[rows] = digest_values(matrix, np.ones(matrix.shape, dtype=np.bool_), keys)
    return out, counts


async def fetch_stored(
    store_url: str, devices: list[str], start: float, end: float
) -> StoredReadings:
    """Every stored reading of ``devices`` with ``start <= ts < end``."""
    index = {d: i for i, d in enumerate(devices)}
    dev: list[int] = []
    ts: list[float] = []
    seq: list[int] = []
    metrics: list[list[str]] = []
    vals: list[list[float]] = []
    scheme = store_url.split("://", 1)[0].split("+", 1)[0]
    if scheme in ("postgresql", "postgres"):
        import asyncpg

        conn = await asyncpg.connect(store_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            rows = await conn.fetch(
                "SELECT device_id, ts, seq, metrics, vals FROM monitoring_samples "
                "WHERE device_id = ANY($1::text[]) AND ts >= $2 AND ts < $3",
                devices,
                start,
                end,
            )
        finally:
            await conn.close()
        for r in rows:
            dev.append(index[r["device_id"]])
            ts.append(r["ts"])
            seq.append(r["seq"])
            metrics.append(r["metrics"])
            vals.append(r["vals"])
    else:  # any backend, through the store interface
        from monitoring_store import open_store

        store = open_store(store_url)
        await store.start()
        try:
            for d in devices:
                grouped: dict[tuple[float, int], tuple[list[str], list[float]]] = {}
                for s in await store.query_samples(
                    d, metrics=None, start=start, end=end, limit=10_000_000
                ):
                    m, v = grouped.setdefault((s.ts, -1 if s.seq is None else s.seq), ([], []))
                    m.append(s.metric)
                    v.append(s.value)
                for (t, sq), (m, v) in grouped.items():
                    dev.append(index[d])
                    ts.append(t)
                    seq.append(sq)
                    metrics.append(m)
                    vals.append(v)
        finally:
            await store.close()
    digest, points = _device_digest(metrics, vals)
    return StoredReadings(
        device=np.array(dev, dtype=np.int64),
        ts=np.array(ts, dtype=np.float64),
        seq=np.array(seq, dtype=np.int64),
        digest=digest,
        points=points,
    )


async def count_stored(
    store_url: str, devices: Sequence[str], start: float, end: float
) -> dict[str, int]:
    """Stored readings per device of ``devices`` in [start, end), counted by the store's
    server (cheap; used to wait for the pipeline): devices with none are left out.

    On MongoDB a reading is one document per metric and a replay may store a copy: the
    server groups them by (device, ts, seq) and returns one count per device. Reading the
    samples back to count them, as this did, cost seconds per poll on the emulator (every
    sample decoded on each poll, 10 documents a reading)."""
    if not devices:
        return {}
    scheme = store_url.split("://", 1)[0].split("+", 1)[0]
    if scheme in ("postgresql", "postgres"):
        import asyncpg

        conn = await asyncpg.connect(store_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            rows = await conn.fetch(
                "SELECT device_id, count(*) AS n FROM monitoring_samples "
                "WHERE device_id = ANY($1::text[]) AND ts >= $2 AND ts < $3 GROUP BY device_id",
                list(devices),
                start,
                end,
            )
        finally:
            await conn.close()
        return {r["device_id"]: int(r["n"]) for r in rows}
    if scheme in ("mongodb", "mongodb+srv"):
        return await _count_mongodb(store_url, devices, start, end)
    stored = await fetch_stored(store_url, list(devices), start, end)
    counts = np.bincount(stored.device, minlength=len(devices))
    return {d: int(n) for d, n in zip(devices, counts.tolist(), strict=True) if n}


async def _count_mongodb(
    store_url: str, devices: Sequence[str], start: float, end: float
) -> dict[str, int]:
    import datetime as dt

    from pymongo import AsyncMongoClient
    from pymongo.uri_parser import parse_uri

    from monitoring_store.mongo.connection import DEFAULT_DATABASE, SAMPLES

    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    database = parse_uri(store_url).get("database") or DEFAULT_DATABASE
    # The devices alone first: that stage is what the server plans with an index. The
    # emulator walks the (m.d, t) index for `m.d: {$in}` alone, and for one device's
    # equality with the range on t (the store's own reads), but not for `$in` together with
    # that range: it scanned the whole collection on every poll (explain: COLLSCAN, 90,000
    # documents examined for 5 devices' 1,500). MongoDB merges the two stages and bounds
    # both fields on the same index, as before.
    pipeline: list[dict[str, Any]] = [
        {"$match": {"m.d": {"$in": list(devices)}}},
        {
            "$match": {
                "t": {
                    "$gte": epoch + dt.timedelta(seconds=start - 0.001),
                    "$lte": epoch + dt.timedelta(seconds=end),
                },
                "ts": {"$gte": start, "$lt": end},
            }
        },
        {"$group": {"_id": {"d": "$m.d", "ts": "$ts", "s": "$s"}}},
        {"$group": {"_id": "$_id.d", "n": {"$sum": 1}}},
    ]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store_url)
    try:
        cursor = await client[database][SAMPLES].aggregate(pipeline)
        return {doc["_id"]: int(doc["n"]) for doc in await cursor.to_list()}
    finally:
        await client.close()


async def fetch_deadletters(bootstrap: str, topic: str, *, limit_s: float = 30.0) -> list[bytes]:
    """Every record on the dead-letter topic, from the beginning to its current end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[bytes] = []
    try:
        await consumer.topics()  # fetches the cluster metadata
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            remaining = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not remaining:
                break
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)
            for records in batch.values():
                out.extend(r.value for r in records if r.value is not None)
    finally:
        # aiokafka may surface the cancellation of its own internal task while stopping.
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()
    return out


def _late_keys(dl: DeadLetter) -> list[tuple[str, int]]:
    """(device id, seq) of the readings in a dead letter's payload (reading, list or envelope)."""
    try:
        body = _any.decode(dl.payload)
    except msgspec.DecodeError:
        return []
    device = dl.device_id or ""
    if isinstance(body, dict) and "readings" in body:  # an envelope from the stream agents
        device = body.get("device_id") or device
        items = body["readings"]
    else:
        items = body if isinstance(body, list) else [body]
    keys = []
    for r in items:
        if isinstance(r, list) and len(r) >= 3 and isinstance(r[2], int):
            keys.append((device, r[2]))
        elif isinstance(r, dict) and isinstance(r.get("seq"), int):
            keys.append((device, r["seq"]))
    return keys


def check(
    ledger: Ledger,
    stored: StoredReadings,
    deadletters: list[bytes],
    *,
    http_rejected: int | None = None,
    mqtt_refused: int | None = None,
    since: float | None = None,
) -> CheckResult:
    """Compare what was sent with what was stored and dead-lettered.

    ``stored`` must cover the run's time range (:func:`time_range`); dead letters written
    before ``since`` (an earlier run of the same devices) are ignored. ``mqtt_refused``: the
    messages the MQTT broker refused that the simulator meant it to (its
    ``rejected_as_expected``); over MQTT only unknown-device faults are sent where a device
    may not publish (malformed ones go to the device's own topic, and the bridge
    dead-letters them), so they account for that many unknown-device faults not
    dead-lettered — never more than were injected."""
    recs = ledger.records
    shards = ledger.shards
    run_id = str(ledger.manifest.get("run_id", ""))
    devices = ledger.devices
    dev_index = {d: i for i, d in enumerate(devices)}
    valid_mask = (recs["device"] >= 0) & (recs["seq"] >= 0)
    fault = recs["fault"]
    expect_stored = valid_mask & np.isin(fault, [Fault.NONE, Fault.OUT_OF_ORDER, Fault.DUPLICATE])
    late_mask = valid_mask & (fault == Fault.LATE)

    # -- stored readings, keyed by (device, seq) ------------------------------------------
    key_rec = recs["device"].astype(np.int64) << 40 | recs["seq"].astype(np.int64)
    key_st = stored.device << 40 | stored.seq
    st_keys, st_first, st_counts = np.unique(key_st, return_index=True, return_counts=True)
    stored_twice = int((st_counts > 1).sum())

    def lookup(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        if not len(st_keys):  # nothing stored: every key is missing
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(st_keys, keys), len(st_keys) - 1)
        return np.where(st_keys[pos] == keys, st_first[pos], -1)

    exp_keys = key_rec[expect_stored]
    where = lookup(exp_keys)
    found = where >= 0
    missing = int((~found).sum())
    exp = recs[expect_stored][found]
    at = where[found]
    wrong_values = int((stored.digest[at] != exp["digest"]).sum())
    wrong_ts = int((np.abs(stored.ts[at] - exp["ts"]) > 1e-6).sum())

    late_where = lookup(key_rec[late_mask])
    late_stored = late_where >= 0
    matched = np.zeros(len(stored.ts), dtype=np.bool_)
    matched[at] = True
    matched[late_where[late_stored]] = True
    # Rows of the same key beyond the first were counted as stored twice already.
    first_rows = np.zeros(len(stored.ts), dtype=np.bool_)
    first_rows[st_first] = True
    unexpected = int((first_rows & ~matched).sum())

    # -- dead letters ---------------------------------------------------------------------
    marker_index: dict[tuple[int, int, int], list[int]] = {}
    fault_rows = np.flatnonzero(
        np.isin(fault, [*MALFORMED, Fault.UNKNOWN_DEVICE]) | (fault == Fault.LATE)
    )
    for i in fault_rows.tolist():
        key = (int(shards[i]), int(recs["msg"][i]), int(fault[i]))
        marker_index.setdefault(key, []).append(i)
    late_rows = {
        (devices[int(recs["device"][i])], int(recs["seq"][i])): i
        for i in np.flatnonzero(late_mask).tolist()
    }
    accounted = np.zeros(len(recs), dtype=np.bool_)
    wrong_reason: Counter[str] = Counter()
    seen = unmatched = 0
    for raw in deadletters:
        try:
            dl = deadletter_decoder.decode(raw)
        except msgspec.DecodeError:
            continue
        mine = dl.device_id in dev_index or (run_id and f"sim:{run_id}:".encode() in dl.payload)
        if not mine or (since is not None and dl.ts < since):
            continue
        seen += 1
        rows: list[int] = []
        if dl.reason == R.LATE or (dl.device_id in dev_index and b"sim:" not in dl.payload):
            rows = [late_rows[k] for k in _late_keys(dl) if k in late_rows]
        if not rows:
            m = _MARKER.search(dl.payload)
            if m and m.group(1).decode() == run_id:
                key = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
                rows = marker_index.get(key, [])
                if any(Fault(int(fault[i])) == Fault.LATE for i in rows):
                    keys = set(_late_keys(dl))
                    rows = [
                        i
                        for i in rows
                        if (devices[int(recs["device"][i])], int(recs["seq"][i])) in keys
                    ] or rows
        if not rows:
            unmatched += 1
            continue
        for i in rows:
            kind = Fault(int(fault[i]))
            if dl.reason in EXPECTED_REASONS.get(kind, set()):
                accounted[i] = True
            else:
                wrong_reason[f"{kind.label}->{dl.reason}"] += 1

    # Late readings stored (inside the allowed lateness after all) are accounted for as well.
    late_idx = np.flatnonzero(late_mask)
    accounted[late_idx[late_stored]] = True

    faults: dict[str, dict[str, int]] = {}
    for kind in Fault:
        if kind == Fault.NONE:
            continue
        rows_k = fault == kind
        n = int(rows_k.sum())
        if not n:
            continue
        if kind in (Fault.OUT_OF_ORDER, Fault.DUPLICATE):
            acc = int(found[fault[expect_stored] == kind].sum())
        else:
            acc = int(accounted[rows_k].sum())
        faults[kind.label] = {"injected": n, "accounted": acc}
    unknown = faults.get(Fault.UNKNOWN_DEVICE.label)
    if mqtt_refused is not None and unknown is not None:
        refused = max(0, min(mqtt_refused, unknown["injected"] - unknown["accounted"]))
        unknown["refused_at_broker"] = refused
        unknown["accounted"] += refused
    if http_rejected is not None:
        # Over HTTP the bridge answers 4xx to refused messages; count those as accounted.
        for kind in (*MALFORMED, Fault.UNKNOWN_DEVICE):
            if kind.label in faults:
                faults[kind.label]["accounted"] = faults[kind.label]["injected"]

    faults_ok = all(v["accounted"] == v["injected"] for v in faults.values())
    result = CheckResult(
        ok=missing == 0
        and stored_twice == 0
        and wrong_values == 0
        and wrong_ts == 0
        and unexpected == 0
        and faults_ok,
        expected_readings=int(expect_stored.sum()),
        expected_points=int(recs["points"][expect_stored].sum()),
        stored_readings=int(found.sum()),
        stored_points=int(stored.points[at].sum()),
        missing=missing,
        stored_twice=stored_twice,
        wrong_values=wrong_values,
        wrong_ts=wrong_ts,
        unexpected_stored=unexpected,
        faults=faults,
        late_stored_inside_lateness=int(late_stored.sum()),
        deadletters_seen=seen,
        deadletters_unmatched=unmatched,
        wrong_reason=dict(wrong_reason),
    )
    if missing:
        miss = recs[expect_stored][~found][:5]
        result.examples["missing"] = [
            {"device": devices[int(r["device"])], "seq": int(r["seq"]), "ts": float(r["ts"])}
            for r in miss
        ]
    return result


def time_range(ledger: Ledger) -> tuple[float, float]:
    """The span of the run's timestamps, padded a little. Late readings are left out: their
    range would reach back into earlier runs of the same devices (``--reuse-devices``)."""
    recs = ledger.records
    ts = recs["ts"][recs["fault"] != Fault.LATE]
    if len(ts) == 0:
        return 0.0, 0.0
    return float(ts.min()) - 1.0, float(ts.max()) + 1.0


async def wait_until_stored(
    store_url: str, ledger: Ledger, *, limit_s: float, settle_s: float = 3.0
) -> int:
    """Poll the store until the expected readings are there (or the count stops moving).

    Incremental: a device whose expected readings are all stored is not counted again (the
    pipeline never removes a reading), so each poll asks only about the devices still
    short, and the last polls of a drain cost little however much is stored."""
    recs = ledger.records
    mask = (recs["device"] >= 0) & np.isin(
        recs["fault"], [Fault.NONE, Fault.OUT_OF_ORDER, Fault.DUPLICATE]
    )
    per_device = np.bincount(recs["device"][mask], minlength=len(ledger.devices))
    expected = {d: int(n) for d, n in zip(ledger.devices, per_device.tolist(), strict=True)}
    expect = int(per_device.sum())
    start, end = time_range(ledger)
    deadline = time.monotonic() + limit_s
    done = 0  # readings of the devices that are complete
    pending = [d for d in ledger.devices if expected[d] > 0]
    last, last_change = -1, time.monotonic()
    while True:
        counts = await count_stored(store_url, pending, start, end)
        complete = {d for d in pending if counts.get(d, 0) >= expected[d]}
        done += sum(counts[d] for d in complete)
        n = done + sum(n for d, n in counts.items() if d not in complete)
        pending = [d for d in pending if d not in complete]
        now = time.monotonic()
        if n != last:
            last, last_change = n, now
        stalled = now - last_change > max(settle_s, 1.0) * 5
        if n >= expect or not pending or now > deadline or stalled:
            return n
        await asyncio.sleep(0.5)


async def run_check(
    ledger_dir: Path,
    *,
    store_url: str,
    bootstrap: str,
    topic_prefix: str = "",
    wait_s: float = 60.0,
) -> CheckResult:
    ledger = read_ledger(ledger_dir)
    t0 = time.monotonic()
    await wait_until_stored(store_url, ledger, limit_s=wait_s)
    t1 = time.monotonic()
    start, end = time_range(ledger)
    stored = await fetch_stored(store_url, ledger.devices, start, end)
    t2 = time.monotonic()
    deadletters = await fetch_deadletters(bootstrap, Topics(topic_prefix).telemetry_deadletter)
    t3 = time.monotonic()
    transport = ledger.manifest.get("transport")
    rejected = (ledger.manifest.get("summary") or {}).get("rejected_as_expected")
    started = ledger.manifest.get("start")
    result = check(
        ledger,
        stored,
        deadletters,
        http_rejected=rejected if transport == "http" else None,
        mqtt_refused=rejected if transport == "mqtt" else None,
        since=float(started) - 5.0 if started else None,
    )
    result.timings = {
        "wait_for_store": round(t1 - t0, 1),
        "read_store": round(t2 - t1, 1),
        "read_deadletters": round(t3 - t2, 1),
        "compare": round(time.monotonic() - t3, 1),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ledger", type=Path)
    parser.add_argument("--store-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--topic-prefix", default="")
    parser.add_argument("--wait", type=float, default=60.0)
    args = parser.parse_args()
    result = asyncio.run(
        run_check(
            args.ledger,
            store_url=args.store_url,
            bootstrap=args.kafka,
            topic_prefix=args.topic_prefix,
            wait_s=args.wait,
        )
    )
    print(json.dumps(asdict(result), indent=1))
    raise SystemExit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
