"""At-least-once publishing: nothing is lost or failed across a broker restart.

A private Mosquitto (its own port and persistence directory, never the shared one) is stopped
and started again while the simulator publishes at QoS 1; every reading must reach a
subscriber and none may count as failed. HTTP and AMQP retries are checked against fakes.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import paho.mqtt.client as mqtt
import pytest

from iotctl.mosquitto import Mosquitto
from simulator.fleet import Fleet
from simulator.ledger import read_ledger
from simulator.registry import local_devices
from simulator.runner import RunOptions, run
from simulator.transports import AmqpTransport, HttpTransport, MqttTransport, TransportConfig

_decode = msgspec.json.Decoder()


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A broker of this test's own, so it can be stopped or killed. It saves every second,
    so even after a SIGKILL the subscriber's session (subscription and queue) is back when the
    broker restarts; otherwise a publisher reconnecting before the subscriber re-subscribed
    would have its re-sent messages acknowledged and routed nowhere."""
    broker = Mosquitto(accounts=None, autosave_interval=1, max_queued_messages=100_000)
    broker.start()
    yield broker
    broker.cleanup()


class PersistentSink:
    """A QoS 1 subscriber with a persistent session that reconnects by itself: Mosquitto's own
    ``mosquitto_sub``, a process of its own.

    Not a client in the test's process: there it shares the interpreter (and the coverage
    tracer) with the simulator's publishing thread, and on a loaded machine it fell behind.
    Mosquitto then held the readings it had acknowledged to the simulator but not yet
    delivered in memory, and a SIGKILL loses what arrived since its last save (up to
    ``autosave_interval``): measured with a sink slowed to 8 ms a message, 199 and 214 of 1,600
    readings, all from the last second before the kill. That is the broker's durability, not
    the simulator's; a sink that keeps up leaves the broker nothing undelivered to lose.
    """

    def __init__(self, port: int, topic_prefix: str, client_id: str) -> None:
        self.lock = threading.Lock()
        self.readings: set[tuple[str, int]] = set()
        self.received = 0
        cmd = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "311", "-c"]
        cmd += ["-i", client_id, "-q", "1", "-t", f"{topic_prefix}devices/+/telemetry"]
        self.proc = subprocess.Popen(
            [*cmd, "-F", "%t %p"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.messages = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # Subscribed once a probe (an empty batch, no reading) comes back through the broker.
        probe = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1"]
        probe += ["-t", f"{topic_prefix}devices/probe/telemetry", "-m", "[]"]
        deadline = time.monotonic() + 10
        while not self.messages:
            assert time.monotonic() < deadline, "mosquitto_sub did not subscribe"
            subprocess.run(probe, check=True, timeout=10)
            time.sleep(0.1)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            topic, _, payload = line.rstrip(b"\n").partition(b" ")
            device_id = topic.decode().split("/")[-2]
            body = _decode.decode(payload)
            items = body if isinstance(body, list) else [body]
            with self.lock:
                self.messages += 1
                self.received += len(items)
                for r in items:
                    self.readings.add((device_id, int(r["seq"])))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._reader.join(10)


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "sigkill"])
def test_no_reading_fails_or_is_lost_across_a_broker_restart(
    mosquitto: Mosquitto, make_fleet: Any, tmp_path: Path, run_id: str, crash: bool
) -> None:
    prefix = f"sim{run_id}/"
    fleet = Fleet.model_validate(make_fleet())
    sink = PersistentSink(mosquitto.port, prefix, f"sink-{run_id}")
    summary: dict[str, Any] = {}
    opts = RunOptions(
        fleet=fleet,
        rate=200,
        duration=8,
        processes=1,
        transport=TransportConfig(
            kind="mqtt",
            mqtt_port=mosquitto.port,
            mqtt_topic_prefix=prefix,
            give_up_after=30,
        ),
        devices=local_devices(fleet, 5),
        ledger_dir=tmp_path / "ledger",
        run_id=run_id,
        live=False,
    )
    publisher = threading.Thread(target=lambda: summary.update(run(opts)))
    try:
        publisher.start()
        wait_until(lambda: sink.received >= 300, 30, "the first readings")
        down_at = time.time()
        if crash:
            mosquitto.kill()
        else:
            mosquitto.stop()
        time.sleep(2.0)  # the simulator keeps publishing while the broker is away
        up_at = time.time()
        mosquitto.start()
        publisher.join(90)
        assert not publisher.is_alive()
        wait_until(lambda: len(sink.readings) >= 1600, 30, "every reading at the subscriber")
    finally:
        sink.close()
        publisher.join(60)

    ledger = read_ledger(tmp_path / "ledger")
    sent = {(ledger.devices[int(r["device"])], int(r["seq"])) for r in ledger.records}
    assert len(sent) == len(ledger.records) == summary["readings"] == 1600
    assert summary["failed"] == 0
    assert summary["confirmed"] == summary["messages"] == 1600
    assert sent == sink.readings
    # Readings published while the broker was away (queued, then sent after the reconnect).
    while_down = [r for r in ledger.records if down_at + 0.1 < r["ts"] < up_at - 0.1]
    assert len(while_down) > 100


async def test_mqtt_gives_up_only_after_the_retry_period(mosquitto: Mosquitto) -> None:
    transport = MqttTransport(
        TransportConfig(kind="mqtt", mqtt_port=mosquitto.port, give_up_after=1.5)
    )
    await transport.start()
    try:
        await transport.publish("dev", b"{}", token=None, expect_reject=False)
        await transport.flush(10)
        assert transport.acked == 1
        mosquitto.stop()  # and it does not come back
        for _ in range(5):
            await transport.publish("dev", b"{}", token=None, expect_reject=False)
        await asyncio.sleep(0.5)
        assert transport.failed == 0  # still kept for re-sending
        await transport.flush(10)
        assert transport.failed == 5
        assert transport.in_flight == 0
    finally:
        await transport.close()


def http_transport(handler: Any, give_up_after: float = 10.0) -> HttpTransport:
    cfg = TransportConfig(kind="http", give_up_after=give_up_after, retry_min=0.01, retry_max=0.05)
    transport = HttpTransport(cfg)
    transport._client = httpx.AsyncClient(
        base_url="http://ingest", transport=httpx.MockTransport(handler)
    )
    return transport


async def test_http_retries_connection_errors_and_5xx_but_not_4xx() -> None:
    calls: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        device = request.url.path.rsplit("/", 1)[-1]
        n = calls[device] = calls.get(device, 0) + 1
        if device == "flaky":
            if n == 1:
                raise httpx.ConnectError("connection refused")
            if n == 2:
                return httpx.Response(503)
            return httpx.Response(202)
        if device == "bad":
            return httpx.Response(400)
        return httpx.Response(422)  # "malformed": a rejection the simulator meant

    transport = http_transport(handler)
    try:
        await transport.publish("flaky", b"{}", token="t", expect_reject=False)
        await transport.publish("bad", b"{}", token="t", expect_reject=False)
        await transport.publish("malformed", b"{", token="t", expect_reject=True)
        await transport.flush(10)
    finally:
        await transport.close()
    assert calls == {"flaky": 3, "bad": 1, "malformed": 1}
    assert (transport.acked, transport.failed, transport.rejected) == (1, 1, 1)


async def test_http_gives_up_after_the_retry_period() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    transport = http_transport(handler, give_up_after=0.5)
    try:
        await transport.publish("dev", b"{}", token="t", expect_reject=False)
        await transport.flush(10)
    finally:
        await transport.close()
    assert transport.failed == 1
    assert transport.retries >= 2


async def test_amqp_republishes_what_was_not_confirmed() -> None:
    published: list[bytes] = []

    class FlakyExchange:
        attempts = 0

        async def publish(self, message: Any, routing_key: str, timeout: float) -> None:
            self.attempts += 1
            if self.attempts <= 2:
                raise ConnectionError("connection lost before the confirm")
            published.append(message.body)

    transport = AmqpTransport(
        TransportConfig(kind="amqp", give_up_after=10, retry_min=0.01, retry_max=0.05)
    )
    transport._exchange = FlakyExchange()
    try:
        await transport.publish("dev", b'{"seq": 1}', token=None, expect_reject=False)
        await transport.flush(10)
    finally:
        transport._conn = None
        await transport.close()
    assert published == [b'{"seq": 1}']
    assert (transport.acked, transport.failed, transport.retries) == (1, 0, 2)


def session_present(port: int, client_id: str) -> bool:
    """Whether the broker still holds a session for ``client_id`` (connecting leaves it)."""
    flags: list[bool] = []
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=False,
    )
    client.on_connect = lambda c, u, f, *a: flags.append(f.session_present)
    client.connect("127.0.0.1", port)
    client.loop_start()
    wait_until(lambda: flags, 10, "CONNACK")
    client.disconnect()
    client.loop_stop()
    return flags[0]


async def test_mqtt_session_is_kept_while_running_and_ended_on_close(
    mosquitto: Mosquitto, run_id: str
) -> None:
    cfg = TransportConfig(kind="mqtt", mqtt_port=mosquitto.port, client_id=f"sim-{run_id}")
    transport = MqttTransport(cfg)
    await transport.start()
    await transport.publish("dev", b"{}", token=None, expect_reject=False)
    await transport.flush(10)
    # The session the simulator relies on across reconnects exists on the broker.
    transport.client.disconnect()
    transport.client.loop_stop()
    assert await asyncio.to_thread(session_present, mosquitto.port, cfg.client_id)
    await transport.close()  # nothing unconfirmed: the broker may forget the session
    assert not await asyncio.to_thread(session_present, mosquitto.port, cfg.client_id)
