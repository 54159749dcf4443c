"""Publishing to the real Mosquitto, counted by a subscriber: rate and completeness as outcomes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest
from typer.testing import CliRunner

from simulator.__main__ import app
from simulator.fleet import Fleet
from simulator.ledger import read_ledger
from simulator.registry import local_devices
from simulator.runner import RunOptions, run
from simulator.transports import TransportConfig

_decode = msgspec.json.Decoder()


class CountingSink:
    """An MQTT subscriber counting readings and when they arrived."""

    def __init__(self, host: str, port: int, topic_prefix: str) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[tuple[float, int]] = []
        self.readings: set[tuple[str, int]] = set()
        self.duplicates = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(f"{topic_prefix}devices/+/telemetry", 1)
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.monotonic()
        device_id = msg.topic.split("/")[-2]
        try:
            body = _decode.decode(msg.payload)
        except msgspec.DecodeError:
            return  # an injected malformed message
        items = body if isinstance(body, list) else [body]
        with self.lock:
            self.arrivals.append((now, len(items)))
            for r in items:
                if not isinstance(r, dict) or "seq" not in r:
                    continue
                key = (device_id, r["seq"])
                if key in self.readings:
                    self.duplicates += 1
                self.readings.add(key)

    def wait_for(self, n: int, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while len(self.readings) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def topic_root(run_id: str) -> str:
    return f"sim{run_id}/{time.monotonic_ns()}/"


def test_publishes_5000_readings_per_second_for_10_seconds(
    mqtt_address: tuple[str, int], topic_root: str, make_fleet: Any, tmp_path: Path
) -> None:
    fleet = Fleet.model_validate(make_fleet())
    sink = CountingSink(*mqtt_address, topic_root)
    try:
        summary = run(
            RunOptions(
                fleet=fleet,
                rate=5000,
                duration=10,
                batch=10,
                processes=1,
                transport=TransportConfig(
                    kind="mqtt",
                    mqtt_host=mqtt_address[0],
                    mqtt_port=mqtt_address[1],
                    mqtt_topic_prefix=topic_root,
                ),
                devices=local_devices(fleet, 3),
                ledger_dir=tmp_path / "ledger",
                live=False,
            )
        )
        sink.wait_for(50_000)
    finally:
        sink.close()
    # Everything arrived, once (QoS 1 may redeliver on reconnects; there were none).
    assert len(sink.readings) == 50_000
    assert summary["failed"] == 0
    assert summary["confirmed"] == summary["messages"] == 5000
    # The rate as the subscriber saw it: readings after the first message over the time from
    # the first arrival to the last (messages are evenly spaced, 500 per second).
    arrivals = sorted(sink.arrivals)
    span = arrivals[-1][0] - arrivals[0][0]
    received_rate = sum(n for _, n in arrivals[1:]) / span
    assert received_rate == pytest.approx(5000, rel=0.02)
    assert summary["achieved_rate"] == pytest.approx(5000, rel=0.02)
    ledger = read_ledger(tmp_path / "ledger")
    assert len(ledger.records) == 50_000
    keys = {(ledger.devices[int(r["device"])], int(r["seq"])) for r in ledger.records}
    assert keys == sink.readings


def test_cli_run_publishes_a_fleet_with_faults_over_mqtt(
    mqtt_address: tuple[str, int], topic_root: str, tmp_path: Path
) -> None:
    sink = CountingSink(*mqtt_address, topic_root)
    fleet = Path(__file__).parents[1] / "fleets" / "demo.yaml"
    try:
        result = CliRunner().invoke(
            app,
            [
                "run",
                "--config",
                str(fleet),
                "--rate",
                "500",
                "--duration",
                "2",
                "--transport",
                "mqtt",
                "--no-register",
                "--no-live",
                "--mqtt-topic-prefix",
                topic_root,
                "--ledger",
                str(tmp_path / "ledger"),
                "--summary-json",
                str(tmp_path / "summary.json"),
            ],
            env={"IOT_MQTT_HOST": mqtt_address[0], "IOT_MQTT_PORT": str(mqtt_address[1])},
        )
        assert result.exit_code == 0, result.output
        sink.wait_for(1000)
    finally:
        sink.close()
    summary = msgspec.json.decode((tmp_path / "summary.json").read_bytes())
    assert summary["readings"] == 1000
    assert summary["failed"] == 0
    ledger = read_ledger(tmp_path / "ledger")
    valid = {
        (ledger.devices[int(r["device"])], int(r["seq"]))
        for r in ledger.records
        if r["device"] >= 0 and r["seq"] >= 0
    }
    assert len(valid) == 1000
    assert valid <= sink.readings
    result = CliRunner().invoke(app, ["ledger", str(tmp_path / "ledger")])
    assert result.exit_code == 0
    assert '"records"' in result.output
