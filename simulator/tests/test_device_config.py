"""Simulated devices follow their configuration: HTTP devices poll it, and the sample interval
it sets is the interval a device sends at."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

import httpx
import msgspec
import pytest

from iot_common.device_config import DesiredConfig
from iot_common.telemetry import DeviceReading
from simulator.transports import HttpTransport, TransportConfig, make_transport

_reading = msgspec.json.Decoder(DeviceReading | list[DeviceReading])


def desired(device_id: str, version: int, **settings: Any) -> DesiredConfig:
    return DesiredConfig.model_validate(
        {"device_id": device_id, "version": version, "config": {"settings": settings}}
    )


# -- the publisher: sample intervals ---------------------------------------------------------
def readings_by_device(transport: Any) -> dict[str, list[DeviceReading]]:
    out: dict[str, list[DeviceReading]] = defaultdict(list)
    for device_id, payload, reject in transport.messages:
        if reject:
            continue
        body = _reading.decode(payload)
        out[device_id].extend(body if isinstance(body, list) else [body])
    return out


@pytest.mark.parametrize("batch", [1, 4])
def test_a_devices_sample_interval_thins_its_readings(
    recording_run: Any, make_fleet: Any, batch: int
) -> None:
    # 8 devices at 160 readings/s: each device has a slot every 0.05 s (the base interval).
    fleet = make_fleet()
    plain, _, devices = recording_run(fleet, rate=160, duration=1.0, batch=batch)
    slow, fast = devices[0].id, devices[1].id
    intervals = {slow: 0.25, fast: 0.01}  # every 5th slot; faster than a slot: every slot
    thinned, pub, _ = recording_run(
        fleet, rate=160, duration=1.0, batch=batch, sample_intervals=intervals
    )
    assert pub.base_interval == pytest.approx(0.05)

    before, after = readings_by_device(plain), readings_by_device(thinned)
    assert len(before[slow]) == 20 and len(after[slow]) == 4
    # The device sends every 0.25 s; its readings are those it would have sent in those slots
    # (same sequence numbers, timing and values: the interval only skips slots). The sine
    # follows the wall clock, which differs between the two runs; the random walk does not.
    gaps = {round(b.ts - a.ts, 6) for a, b in zip(after[slow], after[slow][1:], strict=False)}
    assert gaps == {0.25}
    assert [r.seq for r in after[slow]] == [0, 5, 10, 15]
    kept = {r.seq: r for r in before[slow]}
    t0, t0_plain = after[slow][0].ts, before[slow][0].ts
    for r in after[slow]:
        plain_r = kept[r.seq]
        assert r.ts - t0 == pytest.approx(plain_r.ts - t0_plain)
        assert r.metrics.get("hum") == plain_r.metrics.get("hum")
    # A device cannot send faster than its slot comes round; the others are untouched.
    for device in devices[1:]:
        assert [r.seq for r in after[device.id]] == [r.seq for r in before[device.id]]
    assert pub.progress.readings == sum(len(v) for v in after.values())


def test_an_interval_applied_mid_run_takes_effect_from_then_on(
    recording_run: Any, make_fleet: Any
) -> None:
    fleet = make_fleet()
    _, _, devices = recording_run(fleet, rate=160, duration=0.05)
    target = devices[0].id

    def on_message(transport: Any, device_id: str) -> None:
        # The device's configuration arrives after its 4th reading.
        sent = sum(1 for d, _, r in transport.messages if d == target and not r)
        if device_id == target and sent == 4:
            transport.sample_intervals[target] = 0.15
            transport.config_changes += 1

    transport, _, _ = recording_run(fleet, rate=160, duration=1.0, on_message=on_message)
    seqs = [r.seq for r in readings_by_device(transport)[target]]
    assert seqs[:4] == [0, 1, 2, 3]
    later = seqs[4:]
    assert later and all(s % 3 == 0 for s in later)  # every 3rd slot (0.15 s / 0.05 s)
    # Chunks already built when the config arrived may still go out; nothing after them.
    assert len(later) <= 6


# -- HTTP devices: their configuration ---------------------------------------------------------
class ConfigServer:
    """The bridge's config endpoints, as a device sees them (httpx.MockTransport handler)."""

    def __init__(self, devices: dict[str, str]) -> None:
        self.tokens = devices  # device id → token
        self.configs = {d: desired(d, 1, sample_interval_s=2) for d in devices}
        self.reported: dict[str, list[int]] = defaultdict(list)
        self.requests: list[tuple[str, str, str | None]] = []
        self.fail_reports = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.005)
            return self.answer(request)
        finally:
            self.in_flight -= 1

    def answer(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")  # ingest, id, config[, reported]
        device_id = parts[1]
        inm = request.headers.get("If-None-Match")
        self.requests.append((request.method, "/".join(parts[2:]), inm))
        if request.headers.get("Authorization") != f"Bearer {self.tokens[device_id]}":
            return httpx.Response(401)
        current = self.configs[device_id]
        etag = f'"config-{current.version}"'
        if request.method == "GET":
            if inm == etag:
                return httpx.Response(304, headers={"ETag": etag})
            return httpx.Response(200, content=current.model_dump_json(), headers={"ETag": etag})
        assert request.method == "PUT" and parts[-1] == "reported"
        if self.fail_reports:
            self.fail_reports -= 1
            return httpx.Response(503)
        version = json.loads(request.content)["version"]
        self.reported[device_id].append(version)
        return httpx.Response(200, json={"reported_version": version})


def http_devices(
    server: ConfigServer, *, poll: float = 0.0
) -> tuple[HttpTransport, list[tuple[str, str]]]:
    creds = list(server.tokens.items())
    cfg = TransportConfig(kind="http", config_poll_interval=poll)
    transport = make_transport(cfg, creds)
    assert isinstance(transport, HttpTransport)
    transport._client = httpx.AsyncClient(
        base_url="http://ingest", transport=httpx.MockTransport(server)
    )
    return transport, creds


async def test_http_device_fetches_its_config_at_start_and_reports_it() -> None:
    server = ConfigServer({"d1": "t1", "d2": "t2"})
    transport, _ = http_devices(server)
    await transport.start()
    try:
        assert server.reported == {"d1": [1], "d2": [1]}
        assert transport.configs["d1"].version == 1
        assert transport.sample_intervals == {"d1": 2.0, "d2": 2.0}
        changes = transport.config_changes

        # Nothing changed: a conditional GET answered 304, nothing applied or reported.
        await transport.poll_configs()
        gets = [r for r in server.requests if r[0] == "GET"]
        assert gets[-2:] == [("GET", "config", '"config-1"')] * 2
        assert server.reported == {"d1": [1], "d2": [1]}
        assert transport.config_changes == changes

        # The owner changes d1's config: the next poll applies and reports version 2.
        server.configs["d1"] = desired("d1", 2, sample_interval_s=5, channel="beta")
        await transport.poll_configs()
        assert server.reported["d1"] == [1, 2] and server.reported["d2"] == [1]
        assert transport.configs["d1"].config.settings["channel"] == "beta"
        assert transport.sample_intervals["d1"] == 5.0
        assert transport.config_changes == changes + 1

        # A settings change that leaves the interval alone does not disturb the publisher.
        server.configs["d2"] = desired("d2", 2, sample_interval_s=2, location="roof")
        await transport.poll_configs()
        assert server.reported["d2"] == [1, 2]
        assert transport.config_changes == changes + 1
    finally:
        await transport.close()


async def test_a_report_that_failed_is_made_again_on_the_next_poll() -> None:
    server = ConfigServer({"d1": "t1"})
    server.fail_reports = 1
    transport, _ = http_devices(server)
    await transport.start()
    try:
        assert server.reported == {} and transport.config_errors == 1
        # Applied, but not reported: the next poll fetches it unconditionally and reports.
        await transport.poll_configs()
        assert server.requests[-2][2] is None
        assert server.reported == {"d1": [1]}
    finally:
        await transport.close()


async def test_http_devices_poll_on_their_own_with_bounded_concurrency() -> None:
    server = ConfigServer({f"d{i}": f"t{i}" for i in range(40)})
    transport, _ = http_devices(server, poll=0.05)
    await transport.start()
    try:
        server.configs["d7"] = desired("d7", 2)  # no interval any more
        for _ in range(200):
            if server.reported["d7"] == [1, 2]:
                break
            await asyncio.sleep(0.01)
        assert server.reported["d7"] == [1, 2]
        assert "d7" not in transport.sample_intervals
        assert server.max_in_flight <= HttpTransport.CONFIG_CONCURRENCY
    finally:
        await transport.close()
    polls = len(server.requests)
    await asyncio.sleep(0.15)
    assert len(server.requests) == polls  # closing stopped the polling


async def test_a_failing_config_endpoint_is_not_fatal_and_tokenless_devices_do_not_poll() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    cfg = TransportConfig(kind="http", config_poll_interval=0)
    transport = make_transport(cfg, [("d1", "t1")])
    assert isinstance(transport, HttpTransport)
    transport._client = httpx.AsyncClient(
        base_url="http://ingest", transport=httpx.MockTransport(refuse)
    )
    await transport.start()  # the readings go on without a configuration
    assert transport.config_errors == 1 and transport.configs == {}
    await transport.close()

    anonymous = make_transport(cfg, [])
    assert isinstance(anonymous, HttpTransport) and anonymous.credentials == []


async def test_a_config_endpoint_that_does_not_answer_delays_the_start_only_briefly() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    transport = make_transport(TransportConfig(kind="http"), [("d1", "t1")])
    assert isinstance(transport, HttpTransport)
    transport.CONFIG_TIMEOUT = 0.2
    transport._client = httpx.AsyncClient(
        base_url="http://ingest", transport=httpx.MockTransport(hang)
    )
    # start() returns while the config request is still waiting (the readings begin)...
    await asyncio.wait_for(transport.start(), 30)
    assert transport.configs == {}
    assert transport._poller is not None and not transport._poller.done()
    await transport.close()  # ...and closing cancels the poll still hanging
    assert transport._poller.done()
