import msgspec
import pytest

from iot_common.telemetry import (
    DeadLetter,
    DeviceReading,
    Reading,
    TelemetryEnvelope,
    deadletter_decoder,
    deadletter_encoder,
    envelope_decoder,
    envelope_encoder,
)


def test_envelope_round_trip_keeps_every_reading() -> None:
    env = TelemetryEnvelope(
        device_id="d1",
        source="mqtt",
        ingest_ts=1.5,
        readings=[Reading(ts=1.0, metrics={"t": 20.5, "h": 40.0}, seq=1), Reading(2.0, {"t": 21})],
    )
    back = envelope_decoder.decode(envelope_encoder.encode(env))
    assert back == env
    assert back.readings[1].seq is None


def test_device_reading_accepts_rfc3339_and_epoch() -> None:
    dec = msgspec.json.Decoder(DeviceReading | list[DeviceReading])
    one = dec.decode(b'{"ts": "2026-11-27T10:00:00Z", "metrics": {"t": 1}}')
    many = dec.decode(b'[{"ts": 1.5, "metrics": {"t": 1}, "seq": 3}]')
    assert isinstance(one, DeviceReading) and one.ts == "2026-11-27T10:00:00Z"
    assert isinstance(many, list) and many[0].seq == 3


def test_device_reading_rejects_non_numeric_metric() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"ts": 1, "metrics": {"t": "hot"}}', type=DeviceReading)


@pytest.mark.parametrize("raw", [b"1e999", b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_values_are_refused(raw: bytes) -> None:
    # JSON has no NaN/Infinity; an overflowing literal must not become inf either.
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(b'{"ts": 1, "metrics": {"t": ' + raw + b"}}", type=DeviceReading)


def test_deadletter_keeps_original_bytes_exactly() -> None:
    raw = b"\xff\x00not json"
    dl = DeadLetter(reason="not_json", source="mqtt", payload=raw, ts=1.0, device_id="d1")
    back = deadletter_decoder.decode(deadletter_encoder.encode(dl))
    assert back.payload == raw
    assert back.reason == "not_json"
