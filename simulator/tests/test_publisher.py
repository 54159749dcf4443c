"""What the publisher sends: schedule, batching, faults, and the ledger that records it."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from iot_common.telemetry import DeviceReading
from simulator.ledger import Fault, digest_pairs, read_ledger
from simulator.pacing import Schedule

_reading = msgspec.json.Decoder(DeviceReading | list[DeviceReading])


def test_schedule_spreads_readings_round_robin() -> None:
    s = Schedule(n_devices=3, batch=2, rate=6.0, duration=2.0)  # 12 readings, 6 messages
    assert s.total_messages == 6
    dev, step, offs, exists = s.readings(0, s.total_messages)
    assert dev.tolist() == [0, 1, 2, 0, 1, 2]
    assert step.tolist() == [[0, 1], [0, 1], [0, 1], [2, 3], [2, 3], [2, 3]]
    # Reading k = step·n + device is due k/rate after the start.
    assert offs[0].tolist() == pytest.approx([0.0, 0.5])
    assert offs[4].tolist() == pytest.approx([7 / 6, 10 / 6])
    assert exists.all()
    # A message is due when its last reading is.
    assert s.due(0.49) == 0 and s.due(0.5) == 1 and s.due(10 / 6) == 5 and s.due(2.0) == 6
    assert s.due_at(3) == pytest.approx(1.5)


def test_last_batches_are_partial_so_exactly_rate_times_duration_go_out() -> None:
    s = Schedule(n_devices=4, batch=10, rate=100.0, duration=1.05)  # 105 readings
    _dev, _step, offs, exists = s.readings(0, s.total_messages)
    assert int(exists.sum()) == 105
    assert offs[exists].max() < 1.05


def test_falling_behind_slides_the_schedule_instead_of_bursting() -> None:
    s = Schedule(n_devices=10, batch=1, rate=1000.0)
    assert s.due(5.0) == 5001
    forfeited = s.slide(behind=5001, max_burst=50)
    assert forfeited == 4951
    assert s.due(5.0) == 50  # only the bounded burst is due now
    assert s.due(5.1) == 150


def test_run_sends_every_scheduled_reading_once(recording_run: Any, make_fleet: Any) -> None:
    transport, pub, devices = recording_run(make_fleet(), rate=2000, duration=1.0, batch=4)
    assert pub.progress.readings == 2000
    seen: Counter[tuple[str, int]] = Counter()
    for device_id, payload, _ in transport.messages:
        body = _reading.decode(payload)
        assert isinstance(body, list) and 1 <= len(body) <= 4
        for r in body:
            assert r.seq is not None and r.metrics
            seen[(device_id, r.seq)] += 1
    assert sum(seen.values()) == 2000
    assert max(seen.values()) == 1
    assert {d for d, _ in seen} == {d.id for d in devices}
    # Per device, seq counts up with time.
    per_dev: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for device_id, payload, _ in transport.messages:
        for r in _reading.decode(payload):  # type: ignore[union-attr]
            per_dev[device_id].append((r.seq, float(r.ts)))
    for items in per_dev.values():
        seqs = [s for s, _ in items]
        assert seqs == list(range(len(seqs)))
        ts = [t for _, t in items]
        assert ts == sorted(ts)


def test_ledger_records_what_was_sent(recording_run: Any, make_fleet: Any, tmp_path: Path) -> None:
    transport, pub, devices = recording_run(
        make_fleet(), rate=3000, duration=1.0, batch=3, ledger_dir=tmp_path
    )
    (tmp_path / "manifest.json").write_text(
        json.dumps({"devices": [d.id for d in devices], "run_id": "testrun"})
    )
    ledger = read_ledger(tmp_path)
    recs = ledger.records
    assert len(recs) == 3000
    assert set(recs["fault"].tolist()) == {Fault.NONE}
    # Recompute each reading's digest from the payload sent and find it in the ledger.
    index = {d.id: d.index for d in devices}
    by_key = {(int(r["device"]), int(r["seq"])): r for r in recs}
    points = 0
    for device_id, payload, _ in transport.messages:
        for r in _reading.decode(payload):  # type: ignore[union-attr]
            rec = by_key[(index[device_id], r.seq)]
            assert rec["ts"] == pytest.approx(float(r.ts), abs=1e-6)
            assert int(rec["points"]) == len(r.metrics)
            names = list(r.metrics)
            assert int(rec["digest"]) == digest_pairs(names, [r.metrics[n] for n in names])
            points += len(r.metrics)
    assert int(recs["points"].sum()) == points == pub.progress.points


def test_injected_faults_are_sent_as_recorded(
    recording_run: Any, make_fleet: Any, tmp_path: Path
) -> None:
    faults = {
        "out_of_order": 0.05,
        "duplicate": 0.05,
        "late": 0.05,
        "late_seconds": 7200,
        "malformed": 0.05,
        "unknown_device": 0.05,
    }
    transport, _pub, devices = recording_run(
        make_fleet(**faults), rate=4000, duration=1.0, batch=1, ledger_dir=tmp_path
    )
    (tmp_path / "manifest.json").write_text(json.dumps({"devices": [d.id for d in devices]}))
    recs = read_ledger(tmp_path).records
    counts = Counter(Fault(int(f)) for f in recs["fault"])
    # Each kind at about its probability (4000 messages, 5 % each).
    for kind in (Fault.OUT_OF_ORDER, Fault.DUPLICATE, Fault.LATE, Fault.UNKNOWN_DEVICE):
        assert 120 <= counts[kind] <= 290, (kind, counts)
    malformed = sum(counts[k] for k in counts if k.label.startswith("malformed"))
    assert 120 <= malformed <= 290
    assert len({k for k in counts if k.label.startswith("malformed")}) == 4

    known = {d.id for d in devices}
    payload_counts = Counter((d, p) for d, p, _ in transport.messages)
    dupes = sum(1 for c in payload_counts.values() if c == 2)
    assert dupes == counts[Fault.DUPLICATE]
    unknown = [m for m in transport.messages if m[0] not in known]
    assert len(unknown) == counts[Fault.UNKNOWN_DEVICE]
    assert all(reject for _, _, reject in unknown)

    bad = 0
    late = 0
    out_of_order = 0
    last_seq: dict[str, int] = {}
    for device_id, payload, reject in transport.messages:
        if device_id not in known:
            continue
        try:
            r = _reading.decode(payload)
        except msgspec.DecodeError:
            bad += 1
            assert reject
            continue
        assert isinstance(r, DeviceReading)
        if not r.metrics:
            bad += 1
            continue
        if b'"sim"' in payload:
            late += 1
            assert float(r.ts) < recs["ts"].max() - 7000
        if r.seq is not None and r.seq < last_seq.get(device_id, -1):
            out_of_order += 1
        last_seq[device_id] = max(last_seq.get(device_id, -1), r.seq or 0)
    assert bad == malformed
    assert late == counts[Fault.LATE]
    # A held-back message is overtaken by the device's next one (unless that one is held too,
    # or it was the device's last).
    assert 0.8 * counts[Fault.OUT_OF_ORDER] <= out_of_order <= counts[Fault.OUT_OF_ORDER]
    # Every valid reading is in the ledger exactly once; its records cover the schedule.
    valid = recs[recs["device"] >= 0]
    valid = valid[valid["seq"] >= 0]
    keys = valid["device"].astype(np.int64) * 10**9 + valid["seq"]
    assert len(np.unique(keys)) == len(keys) == 4000


def test_same_seed_same_messages(recording_run: Any, make_fleet: Any) -> None:
    fleet = make_fleet(duplicate=0.05, malformed=0.05, out_of_order=0.05)
    a, _, _ = recording_run(fleet, rate=1000, duration=0.5, batch=2, start_wall=1.7e9)
    b, _, _ = recording_run(fleet, rate=1000, duration=0.5, batch=2, start_wall=1.7e9)
    c, _, _ = recording_run(fleet, rate=1000, duration=0.5, batch=2, start_wall=1.7e9, seed=4)
    assert [m[1] for m in a.messages] == [m[1] for m in b.messages]
    assert [m[1] for m in a.messages] != [m[1] for m in c.messages]
