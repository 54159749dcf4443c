"""Device identity on MQTT, end to end: what reaches ``telemetry.raw`` depends on who connected.

The bridge runs in-process against the session's Mosquitto (dynamic security, anonymous
refused) with its own account; each device is a client on that broker (username = device id,
password = its token), created, re-keyed and deleted through the plugin's control topic as
device-management does it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ingest_bridge.sources.mqtt import session_client_id
from iot_common import dynsec
from iotctl.mosquitto import Mosquitto


def reading(seq: int) -> bytes:
    return f'{{"ts": {time.time()}, "metrics": {{"temp": 1.5}}, "seq": {seq}}}'.encode()


async def _device(device_factory: Any, mosquitto: Mosquitto) -> Any:
    dev = await device_factory()
    mosquitto.add_devices([(dev.id, dev.token)])
    return dev


async def _until(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_only_a_devices_own_credential_gets_its_readings_stored(
    app_client, device_factory, mosquitto, mqtt_connect, bus, settings
):
    p = settings.mqtt_topic_prefix
    dev = await _device(device_factory, mosquitto)
    other = await _device(device_factory, mosquitto)
    topic = f"{p}devices/{dev.id}/telemetry"

    assert not mqtt_connect(client_id=dev.id).accepted  # no credential
    assert not mqtt_connect(dev.id, "not-the-token").accepted
    assert not mqtt_connect(dev.id, other.token).accepted  # another device's token
    # Another device's own account may not write this device's topic.
    intruder = mqtt_connect(other.id, other.token)
    assert intruder.accepted
    assert intruder.publish(topic, reading(666)) == "Not authorized"

    own = mqtt_connect(dev.id, dev.token)
    assert own.accepted
    assert own.publish(topic, reading(1)) == "Success"
    await bus.until(lambda: len(bus.readings(dev.id)) == 1, what="the device's own reading")
    assert [r.seq for r in bus.readings(dev.id)] == [1]  # the intruder's never arrived
    assert bus.dead == []


async def test_a_rotated_credential_is_refused_at_once_and_its_session_closed(
    app_client, device_factory, mosquitto, mqtt_connect, bus, settings
):
    dev = await _device(device_factory, mosquitto)
    topic = f"{settings.mqtt_topic_prefix}devices/{dev.id}/telemetry"
    before = mqtt_connect(dev.id, dev.token)
    assert before.publish(topic, reading(1)) == "Success"

    new_token = "rotated-" + dev.token
    mosquitto.control([dynsec.set_password_command(dev.id, new_token)])
    # As soon as the broker answered the change: the old token no longer connects, and the
    # session opened with it is closed.
    assert not mqtt_connect(dev.id, dev.token).accepted
    await _until(before.disconnected.is_set, "the old session to be closed", timeout=1.0)

    after = mqtt_connect(dev.id, new_token)
    assert after.publish(topic, reading(2)) == "Success"
    await bus.until(lambda: len(bus.readings(dev.id)) == 2, what="both readings")
    assert sorted(r.seq for r in bus.readings(dev.id)) == [1, 2]


async def test_a_deleted_device_is_disconnected_and_refused(
    app_client, device_factory, mosquitto, mqtt_connect, bus, settings
):
    dev = await _device(device_factory, mosquitto)
    conn = mqtt_connect(dev.id, dev.token)
    assert conn.accepted

    mosquitto.control([dynsec.delete_command(dev.id)])
    await _until(conn.disconnected.is_set, "the deleted device's disconnection")
    assert not mqtt_connect(dev.id, dev.token).accepted


async def test_a_device_cannot_read_other_devices_or_join_the_bridges_subscription(
    app_client, device_factory, mosquitto, mqtt_connect, bus, settings
):
    p = settings.mqtt_topic_prefix
    dev = await _device(device_factory, mosquitto)
    spy = await _device(device_factory, mosquitto)
    watcher = mqtt_connect(spy.id, spy.token)
    share = f"$share/{settings.mqtt_share_group}/{p}devices/+/telemetry"
    assert watcher.subscribe(f"{p}devices/+/telemetry") == "Not authorized"
    assert watcher.subscribe(f"{p}devices/{dev.id}/telemetry") == "Not authorized"
    assert watcher.subscribe(share) == "Not authorized"
    assert watcher.subscribe("#") == "Not authorized"
    assert not mqtt_connect().accepted  # a stranger with no account cannot subscribe at all

    own = mqtt_connect(dev.id, dev.token)
    for seq in range(20):
        assert own.publish(f"{p}devices/{dev.id}/telemetry", reading(seq)) == "Success"
    # Every reading reaches the bridge: nobody else took a share of the subscription.
    await bus.until(lambda: len(bus.readings(dev.id)) == 20, what="20 readings")
    assert app_client[1].state.bridge.mqtt.received == 20
    assert watcher.messages == []


async def test_a_stranger_cannot_take_over_the_bridges_session(
    app_client, device_factory, mosquitto, mqtt_connect, bus, settings
):
    _, app = app_client
    source = app.state.bridge.mqtt
    generation = source._generation
    dev = await _device(device_factory, mosquitto)

    # Without an account, and with a device's account, the bridge's client id is refused
    # (a successful CONNECT with it would have closed the bridge's connection).
    assert not mqtt_connect(client_id=source.client_id).accepted
    assert not mqtt_connect(dev.id, dev.token, client_id=source.client_id).accepted
    # Nor can anyone subscribe as the bridge without its password.
    assert not mqtt_connect(dynsec.BRIDGE_USERNAME, "guessed", client_id=source.client_id).accepted

    conn = mqtt_connect(dev.id, dev.token)
    topic = f"{settings.mqtt_topic_prefix}devices/{dev.id}/telemetry"
    assert conn.publish(topic, reading(1)) == "Success"
    await bus.until(lambda: len(bus.readings(dev.id)) == 1, what="the reading")
    assert source.connected and source._generation == generation  # never reconnected


def test_the_bridges_client_id_is_per_replica_and_not_guessable(settings):
    base = settings.mqtt_client_id
    one = session_client_id(base, password="pw-1", instance="bridge-a")
    assert one == session_client_id(base, password="pw-1", instance="bridge-a")  # restarts
    assert one != session_client_id(base, password="pw-1", instance="bridge-b")  # replicas
    assert one != session_client_id(base, password="pw-2", instance="bridge-a")  # the secret
    assert one.startswith(f"{base}-") and len(one) >= len(base) + 20
    # The default (ingest-bridge-1 until now) is no longer the id a stranger would try.
    assert session_client_id("ingest-bridge", password=None) != "ingest-bridge-1"


async def test_the_bridge_reads_over_tls_verifying_the_brokers_certificate(
    make_settings, device_factory, mqtt_connect, bus
):
    """``IOT_MQTT_TLS``: the bridge's connection is TLS, trusting ``IOT_MQTT_TLS_CA_FILE``
    (what the prod overlay mounts from the ``mqtt-ca`` Secret); a broker whose certificate
    that CA did not sign is not talked to."""
    import ssl

    from asgi_lifespan import LifespanManager

    from ingest_bridge.main import create_app
    from iotctl.mosquitto import Accounts

    broker = Mosquitto(
        persistence=False, accounts=Accounts(prefixes=("test/+/",), share_group="+"), tls=True
    )
    broker.start()
    try:
        settings = make_settings(
            mqtt_port=broker.tls_port, mqtt_tls=True, mqtt_tls_ca_file=str(broker.tls_ca_path)
        )
        untrusting = make_settings(mqtt_port=broker.tls_port, mqtt_tls=True).mqtt_ssl_context()
        try:
            await asyncio.open_connection(broker.host, broker.tls_port, ssl=untrusting)
        except ssl.SSLCertVerificationError:
            pass
        else:
            raise AssertionError("a certificate no trusted CA signed was accepted")

        dev = await device_factory()
        broker.add_devices([(dev.id, dev.token)])
        app = create_app(settings)
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
            source = app.state.bridge.mqtt
            await _until(lambda: source.connected, "the bridge's TLS session")
            conn = mqtt_connect(dev.id, dev.token, address=broker.address)
            topic = f"{settings.mqtt_topic_prefix}devices/{dev.id}/telemetry"
            assert conn.publish(topic, reading(7)) == "Success"
            await bus.until(lambda: len(bus.readings(dev.id)) == 1, what="the reading over TLS")
            conn.close()
    finally:
        broker.cleanup()
