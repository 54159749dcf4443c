"""The Kafka sink's error path: a record Kafka will never take is dead-lettered, not retried
forever, and everything behind it still reaches Kafka."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest

from ingest_bridge.config import IngestBridgeSettings
from iot_common.telemetry import DeadLetterReason as R

#: A request may carry at most this much (the broker's limit, as the bridge is told it).
MAX_REQUEST = 8192


@pytest.fixture
def settings(make_settings: Any) -> IngestBridgeSettings:
    # Payloads may be larger than a Kafka request: an envelope of a big batch is one record
    # Kafka cannot take (a misconfiguration, but one that must not stall the bridge).
    s: IngestBridgeSettings = make_settings(
        kafka_max_request_bytes=MAX_REQUEST, max_payload_bytes=64 * 1024
    )
    return s


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_record_kafka_cannot_take_is_dead_lettered_and_the_rest_flows(
    app_client: tuple[httpx.AsyncClient, Any], device_factory: Any, bus: Any
) -> None:
    client, _ = app_client
    refused_before = _refused(await client.get("/metrics"))
    big, small = await device_factory(), await device_factory()
    now = time.time()
    batch = [{"ts": now - i * 0.01, "metrics": {"temp": 20.0 + i}, "seq": i} for i in range(400)]
    r = await client.post(f"/ingest/{big.id}", json=batch, headers=auth(big.token))
    assert r.status_code == 202, r.text
    r = await client.post(
        f"/ingest/{small.id}",
        json={"ts": now, "metrics": {"temp": 1.0}, "seq": 1},
        headers=auth(small.token),
    )
    assert r.status_code == 202, r.text

    # The small device's reading got through, the big envelope went to the dead letters.
    await bus.until(lambda: len(bus.readings(small.id)) == 1 and len(bus.dead) == 1, what="outcome")
    assert bus.readings(big.id) == []
    dead = bus.dead[0]
    assert dead.reason == R.TOO_LARGE
    assert dead.device_id == big.id
    assert dead.source == "ingest-bridge"
    assert dead.detail is not None and "Kafka refused" in dead.detail
    assert "truncated" in dead.detail
    # What is kept is the start of the envelope: the evidence of what was refused.
    payload = dead.payload if isinstance(dead.payload, bytes) else base64.b64decode(dead.payload)
    assert 0 < len(payload) < MAX_REQUEST
    assert payload.startswith(b'{"device_id":"' + big.id.encode())

    # Counted, and the bridge keeps taking traffic.
    assert _refused(await client.get("/metrics")) == refused_before + 1
    assert (await client.get("/ready")).status_code == 200
    r = await client.post(
        f"/ingest/{big.id}",
        json={"ts": time.time(), "metrics": {"temp": 2.0}, "seq": 500},
        headers=auth(big.token),
    )
    assert r.status_code == 202
    await bus.until(lambda: len(bus.readings(big.id)) == 1, what="the next reading")


def _refused(r: httpx.Response) -> float:
    for line in r.text.splitlines():
        if line.startswith("ingest_kafka_refused_total "):
            return float(line.split()[1])
    raise AssertionError("no ingest_kafka_refused_total in /metrics")
