"""Publishing to the real Mosquitto, counted by a subscriber: rate and completeness as outcomes."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest
from typer.testing import CliRunner

from iot_common import dynsec
from iotctl.mosquitto import Mosquitto
from simulator.__main__ import app
from simulator.device_mqtt import DeviceMqttTransport
from simulator.fleet import Fleet
from simulator.ledger import read_ledger
from simulator.registry import local_devices
from simulator.runner import RunOptions, run
from simulator.transports import TransportConfig

_decode = msgspec.json.Decoder()


class CountingSink:
    """An MQTT subscriber counting readings and when they arrived."""

    def __init__(
        self,
        host: str,
        port: int,
        topic_prefix: str,
        *,
        account: tuple[str, str] | None = None,
        share_group: str | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[tuple[float, int]] = []
        self.readings: set[tuple[str, int]] = set()
        self.duplicates = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if account is not None:
            self.client.username_pw_set(*account)
        topic = f"{topic_prefix}devices/+/telemetry"
        if share_group is not None:  # as the bridge subscribes (its account may do only that)
            topic = f"$share/{share_group}/{topic}"
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, 1)
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


def test_registered_devices_publish_on_their_own_authenticated_connections(
    mosquitto: Mosquitto, run_id: str, make_fleet: Any, tmp_path: Path
) -> None:
    """On the platform's broker (anonymous refused, each device its own topic only) every
    device connects with its token; the rate and completeness are those of the shared
    connection's test above."""
    prefix = f"test/sim{run_id}{secrets.token_hex(3)}/"
    fleet = Fleet.model_validate(make_fleet())
    devices = local_devices(fleet, 6)
    for d in devices:  # ids of their own: the broker keeps clients for the whole session
        d.id, d.token = str(uuid.uuid4()), secrets.token_urlsafe(24)
    mosquitto.add_devices((d.id, d.token) for d in devices if d.token)
    sink = CountingSink(
        *mosquitto.address,
        prefix,
        account=(dynsec.BRIDGE_USERNAME, dynsec.DEV_BRIDGE_PASSWORD),
        share_group=f"sim{run_id}",
    )
    try:
        summary = run(
            RunOptions(
                fleet=fleet,
                rate=5000,
                duration=4,
                batch=10,
                processes=1,
                transport=TransportConfig(
                    kind="mqtt",
                    mqtt_host=mosquitto.host,
                    mqtt_port=mosquitto.port,
                    mqtt_topic_prefix=prefix,
                ),
                devices=devices,
                live=False,
            )
        )
        sink.wait_for(20_000)
    finally:
        sink.close()
    assert len(sink.readings) == 20_000
    assert {d for d, _ in sink.readings} == {d.id for d in devices}
    assert summary["failed"] == 0
    assert summary["confirmed"] == summary["messages"] == 2000
    assert summary["achieved_rate"] == pytest.approx(5000, rel=0.02)


def test_a_device_whose_token_the_broker_does_not_know_is_refused(
    mosquitto: Mosquitto, make_fleet: Any
) -> None:
    fleet = Fleet.model_validate(make_fleet())
    devices = local_devices(fleet, 2)
    for d in devices:  # ids of their own: the broker keeps clients for the whole session
        d.id, d.token = str(uuid.uuid4()), secrets.token_urlsafe(24)
    # Every device but the last is provisioned on the broker.
    mosquitto.add_devices((d.id, str(d.token)) for d in devices[:-1])
    transport = DeviceMqttTransport(
        # A refused login is retried for at most give_up_after (here 1 s), then it is final.
        TransportConfig(
            kind="mqtt", mqtt_host=mosquitto.host, mqtt_port=mosquitto.port, give_up_after=1
        ),
        [(d.id, str(d.token)) for d in devices],
    )
    with pytest.raises(ConnectionError, match="refused 1 device"):
        asyncio.run(transport.start())


def test_a_device_provisioned_a_moment_after_its_first_login_connects(
    mosquitto: Mosquitto,
) -> None:
    """device-management may answer a credential request before the broker applied it: the
    device's refused login is retried, and it connects once its client exists."""
    device, token = str(uuid.uuid4()), secrets.token_urlsafe(24)
    transport = DeviceMqttTransport(
        TransportConfig(kind="mqtt", mqtt_host=mosquitto.host, mqtt_port=mosquitto.port),
        [(device, token)],
    )

    async def go() -> None:
        starting = asyncio.create_task(transport.start())
        await asyncio.sleep(0.5)  # refused at least once by now
        await asyncio.to_thread(mosquitto.add_devices, [(device, token)])
        await asyncio.wait_for(starting, 10)
        await transport.close()

    asyncio.run(go())
    assert transport.devices[device].ever_connected


def test_the_broker_refusing_a_publish_for_another_device_is_counted(
    mosquitto: Mosquitto,
) -> None:
    """A device publishing for an id it has no credential for is refused by the broker (MQTT
    v5 PUBACK "Not authorized"): counted as rejected when the simulator meant it (an
    injected unknown-device fault), as failed otherwise; its own readings are confirmed."""
    device, token = str(uuid.uuid4()), secrets.token_urlsafe(24)
    mosquitto.add_devices([(device, token)])
    transport = DeviceMqttTransport(
        TransportConfig(kind="mqtt", mqtt_host=mosquitto.host, mqtt_port=mosquitto.port),
        [(device, token)],
    )

    # Someone receives the device's own readings (else the broker answers "no matching
    # subscribers" and the device sends them again).
    group = f"refuse{secrets.token_hex(3)}"
    bridge = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ib-{group}")
    bridge.username_pw_set(dynsec.BRIDGE_USERNAME, dynsec.DEV_BRIDGE_PASSWORD)
    bridge.connect(mosquitto.host, mosquitto.port)
    bridge.subscribe(f"$share/{group}/devices/+/telemetry", qos=1)
    bridge.loop_start()

    async def go() -> None:
        await asyncio.sleep(0.3)  # subscribed
        await transport.start()
        try:
            body = b'{"ts": 1, "metrics": {"t": 1.0}}'
            await transport.publish(device, body, token=token, expect_reject=False)
            await transport.publish("stranger-1", body, token=None, expect_reject=True)
            await transport.publish("stranger-2", body, token=None, expect_reject=True)
            await transport.publish("stranger-3", body, token=None, expect_reject=False)
            await transport.flush(10)
        finally:
            await transport.close()

    try:
        asyncio.run(go())
    finally:
        bridge.loop_stop()
        bridge.disconnect()
    assert (transport.sent, transport.acked, transport.rejected, transport.failed) == (4, 1, 2, 1)


def test_a_reading_nobody_received_is_sent_again_until_someone_does(
    mosquitto: Mosquitto,
) -> None:
    """Mosquitto answers PUBACK 0x10 "No matching subscribers" while the bridge's shared
    subscription is gone (after the broker's restart, until the bridge subscribes again): the
    device sends the reading again instead of counting it delivered, and it arrives."""
    device, token = str(uuid.uuid4()), secrets.token_urlsafe(24)
    mosquitto.add_devices([(device, token)])
    transport = DeviceMqttTransport(
        TransportConfig(kind="mqtt", mqtt_host=mosquitto.host, mqtt_port=mosquitto.port),
        [(device, token)],
    )
    received: list[bytes] = []
    group = f"resend{secrets.token_hex(3)}"
    bridge = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ib-{group}")
    bridge.username_pw_set(dynsec.BRIDGE_USERNAME, dynsec.DEV_BRIDGE_PASSWORD)
    bridge.on_message = lambda _c, _u, m: received.append(m.payload)

    async def go() -> None:
        await transport.start()
        try:
            body = b'{"ts": 1, "metrics": {"t": 1.0}, "seq": 1}'
            await transport.publish(device, body, token=token, expect_reject=False)
            await asyncio.sleep(1.0)  # answered 0x10 (nobody subscribed) and sent again
            assert transport.acked == 0 and transport.resent >= 1
            bridge.connect(mosquitto.host, mosquitto.port)
            bridge.subscribe(f"$share/{group}/devices/+/telemetry", qos=1)
            bridge.loop_start()
            await transport.flush(10)
            assert transport.acked == 1 and transport.failed == 0
            deadline = time.monotonic() + 5
            while not received and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await transport.close()
            bridge.loop_stop()
            bridge.disconnect()

    asyncio.run(go())
    assert received[:1] == [b'{"ts": 1, "metrics": {"t": 1.0}, "seq": 1}']
