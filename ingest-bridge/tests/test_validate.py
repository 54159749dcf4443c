"""The validator on its own: reasons, original bytes per bad reading, and the limits."""

from __future__ import annotations

import json

import pytest

from ingest_bridge.validate import Limits, Validator
from iot_common.telemetry import DeadLetterReason as R

NOW = 1_800_000_000.0
V = Validator(Limits(max_metrics=4, max_future_seconds=60, max_age_seconds=3600))


def check(payload: bytes | object, device: str = "d1"):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return V.validate(device, raw, now=NOW)


def test_good_single_and_batch():
    res = check({"ts": NOW, "metrics": {"t": 1, "h": 2.5}, "seq": 3})
    assert not res.rejects
    assert res.readings[0].ts == NOW
    assert res.readings[0].metrics == {"t": 1.0, "h": 2.5}
    assert res.readings[0].seq == 3
    res = check([{"ts": NOW - i, "metrics": {"t": i}} for i in range(50)])
    assert len(res.readings) == 50 and not res.rejects


def test_rfc3339_timestamps():
    res = check({"ts": "2027-01-15T08:00:00Z", "metrics": {"t": 1}})
    assert res.readings[0].ts == NOW
    naive = check({"ts": "2027-01-15T08:00:00", "metrics": {"t": 1}})
    assert naive.readings[0].ts == res.readings[0].ts  # naive times are UTC


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", R.NOT_JSON),
        (b"{", R.NOT_JSON),
        (b"x" * 70_000, R.TOO_LARGE),
        (b"42", R.INVALID_SCHEMA),
        (b"[]", R.INVALID_SCHEMA),
        ({"metrics": {"t": 1}}, R.INVALID_SCHEMA),
        ({"ts": NOW}, R.MISSING_METRICS),
        ({"ts": NOW, "metrics": None}, R.MISSING_METRICS),
        ({"ts": NOW, "metrics": [1]}, R.INVALID_SCHEMA),
        ({"ts": NOW, "metrics": {"t": "1"}}, R.NON_NUMERIC_METRIC),
        ({"ts": NOW, "metrics": {"t": None}}, R.NON_NUMERIC_METRIC),
        ({"ts": NOW, "metrics": {"t": False}}, R.NON_NUMERIC_METRIC),
        (b'{"ts": 1800000000, "metrics": {"t": -Infinity}}', R.NON_FINITE),
        ({"ts": NOW, "metrics": {f"m{i}": i for i in range(5)}}, R.TOO_MANY_METRICS),
        ({"ts": NOW + 61, "metrics": {"t": 1}}, R.FUTURE_TIMESTAMP),
        ({"ts": NOW - 3601, "metrics": {"t": 1}}, R.TOO_OLD),
        ({"ts": True, "metrics": {"t": 1}}, R.INVALID_SCHEMA),
        ({"ts": NOW, "metrics": {"t": 1}, "seq": "1"}, R.INVALID_SCHEMA),
        ({"ts": NOW, "metrics": {"t": 1}, "device_id": "d2"}, R.DEVICE_MISMATCH),
    ],
)
def test_each_bad_message_has_its_reason(payload, reason):
    res = check(payload)
    assert res.whole
    assert not res.readings
    assert [r.reason for r in res.rejects] == [reason]
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    assert res.rejects[0].payload == raw


def test_bad_reading_in_a_batch_keeps_its_own_bytes_and_spares_the_rest():
    raw = (
        b'[{"ts": 1800000000, "metrics": {"t": 1}, "seq": 1},'
        b' {"ts": 1800000000,   "metrics": {"t": "x"}},'
        b' {"ts": 1800000000, "metrics": {"t": 2}, "seq": 2}]'
    )
    res = V.validate("d1", raw, now=NOW)
    assert [r.seq for r in res.readings] == [1, 2]
    assert not res.whole
    (rej,) = res.rejects
    assert rej.index == 1
    assert rej.reason == R.NON_NUMERIC_METRIC
    assert rej.payload == b'{"ts": 1800000000,   "metrics": {"t": "x"}}'


def test_matching_device_id_in_payload_is_fine():
    assert check({"ts": NOW, "metrics": {"t": 1}, "device_id": "d1"}).readings
