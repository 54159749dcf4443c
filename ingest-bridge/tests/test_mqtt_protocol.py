"""The MQTT v5 packet layer on its own: parsing across arbitrary TCP read boundaries."""

from __future__ import annotations

import random

from ingest_bridge.sources.mqtt import (
    _Connection,
    _varint,
    connect_packet,
    pubacks,
    subscribe_packet,
)


def publish(topic: bytes, payload: bytes, pid: int, qos: int = 1, props: bytes = b"") -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += pid.to_bytes(2, "big")
    body += _varint(len(props)) + props + payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


class FakeSource:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, bytes, int]] = []
        self._generation = 1

    def _received(self, conn, got) -> None:
        self.got.extend(got)


async def test_packets_split_anywhere_are_parsed_exactly():
    rnd = random.Random(7)
    expected = []
    stream = b""
    for i in range(300):
        topic = f"p/devices/dev-{i % 7}/telemetry".encode()
        payload = bytes(rnd.getrandbits(8) for _ in range(rnd.choice([0, 5, 200, 20_000])))
        qos = 0 if i % 10 == 0 else 1
        pid = 0 if qos == 0 else (i % 65535) + 1
        props = b"\x01\x01" if i % 3 == 0 else b""  # payload format indicator property
        stream += publish(topic, payload, pid, qos, props)
        expected.append((topic, payload, pid))
        if i % 50 == 0:
            stream += b"\xd0\x00"  # PINGRESP in between
    source = FakeSource()
    conn = _Connection(source, 1)  # type: ignore[arg-type]
    pos = 0
    while pos < len(stream):
        step = rnd.choice([1, 2, 3, 7, 100, 4096, 65536])
        conn.data_received(stream[pos : pos + step])
        pos += step
    assert source.got == expected


def test_encoders():
    assert pubacks([1, 258]) == b"\x40\x02\x00\x01\x40\x02\x01\x02"
    sub = subscribe_packet(1, "$share/g/devices/+/telemetry")
    assert sub[0] == 0x82
    assert sub.endswith(b"$share/g/devices/+/telemetry\x01")
    assert _varint(0) == b"\x00"
    assert _varint(127) == b"\x7f"
    assert _varint(128) == b"\x80\x01"
    assert _varint(16_384) == b"\x80\x80\x01"


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


def test_connect_announces_the_maximum_packet_size():
    packet = connect_packet(
        client_id="b",
        keepalive=30,
        clean_start=False,
        session_expiry=60,
        receive_maximum=100,
        max_packet_size=256 * 1024,
    )
    # Property 0x27 (Maximum Packet Size), four bytes, in CONNECT's properties.
    assert b"\x27" + (256 * 1024).to_bytes(4, "big") in packet


async def test_a_packet_over_the_limit_is_refused_at_its_header_not_buffered():
    source = FakeSource()
    conn = _Connection(source, 1, max_packet_size=256 * 1024)  # type: ignore[arg-type]
    transport = FakeTransport()
    conn.transport = transport  # type: ignore[assignment]
    small = publish(b"p/devices/d/telemetry", b"{}", 1)
    huge = publish(b"p/devices/d/telemetry", b"x" * (64 * 1024 * 1024), 2)
    conn.data_received(small + huge[: 64 * 1024])
    assert transport.aborted  # the broker broke the limit we announced
    assert source.got == []  # nothing of that read is handed on
    assert conn._parts == [] and conn._rest == b""  # and nothing of it kept


async def test_a_large_packet_in_many_reads_is_kept_in_pieces_and_parsed_once():
    source = FakeSource()
    conn = _Connection(source, 1, max_packet_size=8 * 1024 * 1024)  # type: ignore[arg-type]
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB
    stream = publish(b"p/devices/d/telemetry", payload, 9) + publish(
        b"p/devices/e/telemetry", b"1", 10
    )
    step = 64 * 1024
    for pos in range(0, len(stream) - 10, step):
        conn.data_received(stream[pos : min(pos + step, len(stream) - 10)])
        # The pieces wait as they came (one list entry per read), not joined on every read.
        assert source.got or len(conn._parts) == pos // step + 1
    conn.data_received(stream[len(stream) - 10 :])
    assert source.got == [
        (b"p/devices/d/telemetry", payload, 9),
        (b"p/devices/e/telemetry", b"1", 10),
    ]
