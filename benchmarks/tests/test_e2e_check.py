"""The loss checker against a simulated pipeline: passes when all is there, names what is not."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from benchmarks import e2e_check
from benchmarks.e2e_check import StoredReadings, _device_digest, check, wait_until_stored
from iot_common.telemetry import DeadLetter, DeviceReading
from monitoring_store import open_store
from monitoring_store.base import SampleBatch
from simulator.fleet import Fleet
from simulator.ledger import Fault, read_ledger, write_manifest
from simulator.publisher import Publisher, WorkerSpec
from simulator.registry import local_devices
from simulator.transports import TransportConfig

FLEET: dict[str, Any] = {
    "name": "chk",
    "seed": 1,
    "device_types": [
        {
            "name": "t",
            "count": 6,
            "metrics": [
                {"name": "a", "generator": {"kind": "sine", "amplitude": 3, "noise": 0.1}},
                {"name": "b", "min": 0, "max": 9, "generator": {"kind": "random_walk"}},
                {"name": "c", "dropout": 0.3},
            ],
        }
    ],
    "faults": {
        "out_of_order": 0.03,
        "duplicate": 0.03,
        "late": 0.03,
        "malformed": 0.03,
        "unknown_device": 0.03,
    },
}
_dec = msgspec.json.Decoder(DeviceReading | list[DeviceReading])
_enc = msgspec.json.Encoder()


class Recorder:
    def __init__(self) -> None:
        self.sent = self.acked = self.failed = self.rejected = 0
        self.messages: list[tuple[str, bytes]] = []
        self.sample_intervals: dict[str, float] = {}
        self.config_changes = 0

    async def start(self) -> None: ...

    async def publish(self, device_id: str, payload: bytes, **_: Any) -> None:
        self.sent += 1
        self.acked += 1
        self.messages.append((device_id, payload))

    async def flush(self, limit: float) -> None: ...

    async def close(self) -> None: ...


def _pipeline(ledger_dir: Path) -> tuple[Recorder, list[str]]:
    fleet = Fleet.model_validate(FLEET)
    devices = local_devices(fleet, 1)
    spec = WorkerSpec(
        shard=0,
        shards=1,
        fleet=FLEET,
        devices=devices,
        rate=2000,
        duration=1.0,
        batch=2,
        seed=1,
        run_id="r1",
        transport=TransportConfig(kind="null"),
        start_wall=time.time(),
        ledger_dir=ledger_dir,
    )
    rec = Recorder()
    asyncio.run(Publisher(spec, transport=rec).run())
    write_manifest(ledger_dir, {"run_id": "r1", "devices": [d.id for d in devices]})
    return rec, [d.id for d in devices]


def _simulate_platform(
    messages: list[tuple[str, bytes]], devices: list[str], late_cutoff: float
) -> tuple[StoredReadings, list[bytes]]:
    """What a correct pipeline does: store valid readings once, dead-letter the rest."""
    index = {d: i for i, d in enumerate(devices)}
    rows: dict[tuple[str, float, int], dict[str, float]] = {}
    dead: list[bytes] = []

    def dl(reason: str, device: str, payload: bytes) -> None:
        d = DeadLetter(reason=reason, source="mqtt", payload=payload, ts=0.0, device_id=device)
        dead.append(_enc.encode(d))

    for device, payload in messages:
        if device not in index:
            dl("unknown_device", device, payload)
            continue
        try:
            body = _dec.decode(payload)
        except msgspec.ValidationError:
            obj = msgspec.json.decode(payload)
            reason = "invalid_schema" if "ts" not in obj else "non_numeric_metric"
            dl(reason, device, payload)
            continue
        except msgspec.DecodeError:
            dl("not_json", device, payload)
            continue
        for r in body if isinstance(body, list) else [body]:
            if not r.metrics:
                dl("missing_metrics", device, payload)
            elif float(r.ts) < late_cutoff:
                dl("late", device, _enc.encode(r))
            else:
                rows[(device, float(r.ts), int(r.seq or 0))] = r.metrics
    keys = list(rows)
    digest, points = _device_digest(
        [list(rows[k]) for k in keys], [list(rows[k].values()) for k in keys]
    )
    stored = StoredReadings(
        device=np.array([index[k[0]] for k in keys], dtype=np.int64),
        ts=np.array([k[1] for k in keys]),
        seq=np.array([k[2] for k in keys], dtype=np.int64),
        digest=digest,
        points=points,
    )
    return stored, dead


def test_a_correct_pipeline_passes(tmp_path: Path) -> None:
    rec, devices = _pipeline(tmp_path)
    stored, dead = _simulate_platform(rec.messages, devices, time.time() - 600)
    ledger = read_ledger(tmp_path)
    result = check(ledger, stored, dead)
    assert result.ok, result
    assert result.stored_readings == result.expected_readings > 1800
    assert set(result.faults) >= {"duplicate", "late", "unknown_device", "out_of_order"}
    assert all(v["accounted"] == v["injected"] > 0 for v in result.faults.values())


def test_loss_duplicates_and_corruption_are_named(tmp_path: Path) -> None:
    rec, devices = _pipeline(tmp_path)
    stored, dead = _simulate_platform(rec.messages, devices, time.time() - 600)
    ledger = read_ledger(tmp_path)
    n = len(stored.ts)
    keep = np.ones(n, dtype=np.bool_)
    keep[[3, 10]] = False  # two readings lost
    digest = stored.digest.copy()
    digest[20] ^= np.uint64(1)  # one value changed
    twice = StoredReadings(
        device=np.r_[stored.device[keep], stored.device[30]],
        ts=np.r_[stored.ts[keep], stored.ts[30] + 0.5],  # the same reading again, shifted
        seq=np.r_[stored.seq[keep], stored.seq[30]],
        digest=np.r_[digest[keep], digest[30]],
        points=np.r_[stored.points[keep], stored.points[30]],
    )
    lost_dl = [d for d in dead if b"unknown_device" not in d]
    result = check(ledger, twice, lost_dl)
    assert not result.ok
    assert result.missing == 2
    assert result.wrong_values == 1
    assert result.stored_twice == 1
    assert result.faults["unknown_device"]["accounted"] == 0
    assert len(result.examples["missing"]) == 2


def test_a_pipeline_that_stored_nothing_is_reported_missing_everything(tmp_path: Path) -> None:
    """The check must report a store left empty (the agents never wrote), not crash on it."""
    rec, devices = _pipeline(tmp_path)
    _, dead = _simulate_platform(rec.messages, devices, time.time() - 600)
    result = check(read_ledger(tmp_path), StoredReadings.empty(), dead)
    assert not result.ok
    assert result.stored_readings == 0
    assert result.missing == result.expected_readings > 1800


def test_markers_survive_the_deadletter_encoding() -> None:
    d = DeadLetter(reason="not_json", source="mqtt", payload=b"x sim:r1:0:5:4", ts=0.0)
    wire = _enc.encode(d)
    assert base64.b64encode(b"x sim:r1:0:5:4") in wire


def _samples(messages: list[tuple[str, bytes]], device: str) -> SampleBatch:
    """Every valid reading ``device`` sent, as the raw samples the agents would write."""
    rows: dict[tuple[float, int], dict[str, float]] = {}
    for d, payload in messages:
        if d != device:
            continue
        try:
            body = _dec.decode(payload)
        except msgspec.MsgspecError:
            continue
        for r in body if isinstance(body, list) else [body]:
            rows[(float(r.ts), int(r.seq or 0))] = r.metrics
    cols = [(ts, seq, m, v) for (ts, seq), ms in rows.items() for m, v in ms.items()]
    return SampleBatch(
        device_id=np.array([device] * len(cols), dtype=object),
        metric=np.array([c[2] for c in cols], dtype=object),
        ts=np.array([c[0] for c in cols], dtype=np.float64),
        value=np.array([c[3] for c in cols], dtype=np.float64),
        seq=np.array([c[1] for c in cols], dtype=np.int64),
    )


@pytest.mark.parametrize("backend", ["postgres", "mongodb"])
def test_waiting_for_the_store_counts_readings_once_and_asks_only_about_devices_short(
    tmp_path: Path,
    backend: str,
    store_url_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loss check waits for the pipeline by counting stored readings: a replayed reading
    counts once (on MongoDB it is ten documents, one per metric, stored twice), and a device
    whose readings are all in is not counted again — re-reading every sample on every poll
    took seconds per poll on the MongoDB emulator."""
    rec, devices = _pipeline(tmp_path)
    ledger = read_ledger(tmp_path)
    url = store_url_factory(backend, "e2echeck")
    first, *rest = devices
    asked: list[list[str]] = []
    real_count = e2e_check.count_stored
    n = asyncio.run(_fill_and_wait(url, ledger, rec, first, rest, asked, real_count, monkeypatch))
    recs = ledger.records
    pairs = zip(recs["device"].tolist(), recs["fault"].tolist(), strict=True)
    expected = sum(1 for d, f in pairs if d >= 0 and Fault(f).expect_stored)
    assert n == expected > 1800
    assert sorted(asked[0]) == sorted(devices)
    assert asked[1:] == [[rest[-1]]]


async def _fill_and_wait(
    url: str,
    ledger: Any,
    rec: Recorder,
    first: str,
    rest: list[str],
    asked: list[list[str]],
    real_count: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> int:
    store = open_store(url)
    await store.start()
    try:
        await store.insert_samples(_samples(rec.messages, first))
        await store.insert_samples(_samples(rec.messages, first))  # a replay: stored twice
        for d in rest[:-1]:
            await store.insert_samples(_samples(rec.messages, d))

        async def count(
            store_url: str, devs: list[str], start: float, end: float
        ) -> dict[str, int]:
            asked.append(list(devs))
            got = await real_count(store_url, devs, start, end)
            if len(asked) == 1:  # the last device's readings arrive after the first poll
                await store.insert_samples(_samples(rec.messages, rest[-1]))
            return got

        monkeypatch.setattr(e2e_check, "count_stored", count)
        return await wait_until_stored(url, ledger, limit_s=60)
    finally:
        await store.close()


def test_the_wait_on_mongodb_reads_only_the_documents_of_the_devices_short(
    tmp_path: Path, store_url_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each poll's aggregation is served by the (device, time) index: the emulator examines
    the documents of the devices asked about, not every document stored (explain of the very
    command the poll sent; it scanned the whole collection on every poll)."""
    import pymongo
    from pymongo import monitoring

    rec, devices = _pipeline(tmp_path)
    ledger = read_ledger(tmp_path)
    url = store_url_factory("mongodb", "e2eindex")
    sent: list[dict[str, Any]] = []

    class Capture(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name == "aggregate":
                sent.append(dict(event.command))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    client_class = pymongo.AsyncMongoClient

    def listening_client(*args: Any, **kwargs: Any) -> Any:
        return client_class(*args, event_listeners=[Capture()], **kwargs)

    async def fill_count_and_explain() -> tuple[dict[str, int], int, dict[str, Any]]:
        store = open_store(url)
        await store.start()
        try:
            for d in devices:
                await store.insert_samples(_samples(rec.messages, d))
        finally:
            await store.close()
        start, end = e2e_check.time_range(ledger)
        monkeypatch.setattr(pymongo, "AsyncMongoClient", listening_client)
        counts = await e2e_check.count_stored(url, devices[:1], start, end)
        monkeypatch.undo()
        client: pymongo.AsyncMongoClient[dict[str, Any]] = client_class(url)
        try:
            db = client.get_default_database()
            own = await db.monitoring_data.count_documents({"m.d": devices[0]})
            (command,) = sent
            explained = await db.command(
                "explain",
                {"aggregate": command["aggregate"], "pipeline": command["pipeline"], "cursor": {}},
                verbosity="executionStats",
            )
        finally:
            await client.close()
        return counts, own, explained

    counts, own, explained = asyncio.run(fill_count_and_explain())
    recs = ledger.records
    first = recs["device"] == ledger.devices.index(devices[0])
    stored = sum(1 for f in recs["fault"][first].tolist() if Fault(f).expect_stored)
    assert counts == {devices[0]: stored}
    stats = explained["executionStats"]
    assert (
        stats["totalDocsExamined"] == own < sum(len(_samples(rec.messages, d)) for d in devices)
    ), explained["queryPlanner"]["winningPlan"]
