"""Device configuration delivered to the device and reported back, through the ingest bridge.

The real service and the real bridge run in-process (the bridge reaches device-management over
an ASGI transport), against this session's Redis, Kafka and Mosquitto: an owner changes the
config, the device gets it (HTTP with its token, or MQTT as its broker account), reports the
version it applied, and ``GET /devices/{id}`` shows it in sync.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from ingest_bridge.bridge import Bridge
from ingest_bridge.config import IngestBridgeSettings
from ingest_bridge.configs import ConfigClient
from ingest_bridge.devices import DeviceDirectory
from ingest_bridge.main import create_app as create_bridge_app
from iot_common import dynsec
from iotctl.mosquitto import Mosquitto

SETTINGS = {"sample_interval_s": 15, "firmware": {"channel": "beta"}}


async def until(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tag(run_id: str) -> str:
    return f"{run_id}{secrets.token_hex(3)}"


@pytest.fixture
async def start_bridge(
    tag: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_namespace: str,
    mosquitto: Mosquitto,
) -> AsyncIterator[Callable[..., Awaitable[httpx.AsyncClient]]]:
    """Start an ingest bridge in-process that asks the given device-management about devices."""
    stack: list[Any] = []

    async def start(dm: httpx.AsyncClient, **overrides: Any) -> httpx.AsyncClient:
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "redis_url": redis_url,
            "redis_namespace": redis_namespace,
            "topic_prefix": f"t{tag}.",
            "mqtt_host": mosquitto.host,
            "mqtt_port": mosquitto.port,
            "mqtt_username": dynsec.BRIDGE_USERNAME,
            "mqtt_password": dynsec.DEV_BRIDGE_PASSWORD,
            "mqtt_client_id": f"ib-cfg-{tag}",
            "mqtt_share_group": f"g{tag}",
            "mqtt_session_expiry": 0,
            "mqtt_enabled": False,
            "amqp_enabled": False,
            "device_events_enabled": False,
            "internal_token": "test-internal-token",
            "device_management_url": str(dm.base_url),
            "kafka_linger_ms": 2,
            **overrides,
        }
        settings = IngestBridgeSettings(**values)
        redis = Redis.from_url(redis_url)
        common = {
            "device_management_url": settings.device_management_url,
            "internal_token": "test-internal-token",
            "http": dm,
        }
        bridge = Bridge(
            settings,
            redis=redis,
            devices=DeviceDirectory(redis=redis, namespace=redis_namespace, **common),
            configs=ConfigClient(**common),
        )
        app = create_bridge_app(settings, bridge=bridge)
        manager = LifespanManager(app, startup_timeout=30, shutdown_timeout=30)
        await manager.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://bridge"
        )
        stack.append((manager, client, redis))

        async def ready() -> bool:
            return (await client.get("/ready")).status_code == 200

        await until(ready, timeout=30, what="bridge ready")
        return client

    yield start
    while stack:
        manager, client, redis = stack.pop()
        await client.aclose()
        await manager.__aexit__(None, None, None)
        await redis.aclose()


async def _device(service: Any, user: Any, config: dict[str, Any]) -> tuple[str, str]:
    c = service.client
    r = await c.post(
        "/devices/",
        json={"name": f"cfg-{secrets.token_hex(4)}", "type": "thermometer", "config": config},
        headers=user.headers,
    )
    assert r.status_code == 201, r.text
    did = r.json()["id"]
    cred = await c.post(f"/devices/{did}/credentials", headers=user.headers)
    assert cred.status_code == 201, cred.text
    return did, cred.json()["token"]


async def _config_status(service: Any, user: Any, did: str) -> dict[str, Any]:
    r = await service.client.get(f"/devices/{did}", headers=user.headers)
    assert r.status_code == 200, r.text
    status: dict[str, Any] = r.json()["config_status"]
    return status


async def test_http_device_gets_its_config_with_etag_reports_it_and_is_in_sync(
    service: Any, start_bridge: Any, users: dict[str, Any]
) -> None:
    alice = users["alice"]
    bridge = await start_bridge(service.client)
    did, token = await _device(service, alice, {"settings": SETTINGS})
    url = f"/ingest/{did}/config"

    r = await bridge.get(url, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"config-1"'
    assert r.json() == {
        "device_id": did,
        "version": 1,
        "config": {"metrics": [], "rules": [], "settings": SETTINGS},
    }
    # A device that already has it is told so, with no body.
    r = await bridge.get(url, headers={**bearer(token), "If-None-Match": '"config-1"'})
    assert r.status_code == 304 and r.content == b""
    assert r.headers["etag"] == '"config-1"'

    # The owner changes the config: the device's next poll gets version 2.
    new = {"settings": {**SETTINGS, "sample_interval_s": 5}}
    r = await service.client.put(f"/devices/{did}", json={"config": new}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert (await _config_status(service, alice, did))["in_sync"] is False
    r = await bridge.get(url, headers={**bearer(token), "If-None-Match": '"config-1"'})
    assert r.status_code == 200
    assert r.headers["etag"] == '"config-2"'
    assert r.json()["config"]["settings"]["sample_interval_s"] == 5

    # It applies it and says so; the owner sees it in sync.
    r = await bridge.put(f"{url}/reported", json={"version": 2}, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["in_sync"] is True
    status = await _config_status(service, alice, did)
    assert status["desired_version"] == status["reported_version"] == 2
    assert status["in_sync"] is True and status["reported_at"] is not None


async def test_http_config_needs_the_devices_own_token_and_a_valid_report(
    service: Any, start_bridge: Any, users: dict[str, Any]
) -> None:
    alice, bob = users["alice"], users["bob"]
    bridge = await start_bridge(service.client)
    did, token = await _device(service, alice, {"settings": {"secret_site": "vault 7"}})
    other, other_token = await _device(service, bob, {})
    url = f"/ingest/{did}/config"

    # Another device's token, a wrong token, no token, a user's JWT: one 401, nothing read.
    for headers in (bearer(other_token), bearer("nope"), {}, alice.headers):
        r = await bridge.get(url, headers=headers)
        assert r.status_code == 401, r.text
        assert "vault 7" not in r.text
        r = await bridge.put(f"{url}/reported", json={"version": 1}, headers=headers)
        assert r.status_code == 401, r.text
    # A stranger's malformed report is refused as unauthenticated before it is read.
    r = await bridge.put(f"{url}/reported", json={"version": "x"}, headers=bearer(other_token))
    assert r.status_code == 401
    unknown = "00000000-0000-4000-8000-000000000000"
    r = await bridge.get(f"/ingest/{unknown}/config", headers=bearer(token))
    assert r.status_code == 401

    # The device's own bad reports: a clear error, and nothing recorded.
    for bad in ({"version": 0}, {"version": "1"}, {}, {"version": 1, "extra": 1}):
        r = await bridge.put(f"{url}/reported", json=bad, headers=bearer(token))
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] == "validation_error"
    r = await bridge.put(f"{url}/reported", json={"version": 9}, headers=bearer(token))
    assert r.status_code == 409, r.text
    assert "does not exist" in r.json()["error"]["message"]
    assert (await _config_status(service, alice, did))["reported_version"] is None
    assert (await _config_status(service, bob, other))["reported_version"] is None

    # A deactivated device is refused.
    r = await service.client.put(f"/devices/{did}", json={"active": False}, headers=alice.headers)
    assert r.status_code == 200

    async def refused() -> bool:
        return (await bridge.get(url, headers=bearer(token))).status_code == 403

    await until(refused, what="deactivation seen by the bridge")


def _configs(conn: Any, topic: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in conn.messages if t == topic and p]


async def test_mqtt_device_gets_its_retained_config_reports_it_and_is_in_sync(
    start_service: Any, start_bridge: Any, users: dict[str, Any], mqtt_connect: Any, tag: str
) -> None:
    alice = users["alice"]
    prefix = f"test/{tag}/"
    service = await start_service(mqtt_topic_prefix=prefix)
    await start_bridge(service.client, mqtt_enabled=True, mqtt_topic_prefix=prefix)
    did, token = await _device(service, alice, {"settings": SETTINGS})
    topic = f"{prefix}devices/{did}/config"

    # On connect: the retained desired configuration is there for the device.
    dev = mqtt_connect(did, token)
    assert dev.accepted
    assert dev.subscribe(topic) == "Granted QoS 1"

    async def got(version: int) -> bool:
        return any(c["version"] == version for c in _configs(dev, topic))

    await until(lambda: got(1), what="retained config version 1")
    assert _configs(dev, topic)[0] == {
        "device_id": did,
        "version": 1,
        "config": {"metrics": [], "rules": [], "settings": SETTINGS},
    }

    # On every change: the new version arrives on the open connection.
    new = {"settings": {**SETTINGS, "sample_interval_s": 5}}
    r = await service.client.put(f"/devices/{did}", json={"config": new}, headers=alice.headers)
    assert r.status_code == 200, r.text
    await until(lambda: got(2), what="config version 2 pushed")
    assert _configs(dev, topic)[-1]["config"]["settings"]["sample_interval_s"] == 5

    # A malformed report is dropped; the device's own report of version 2 is recorded.
    assert dev.publish(f"{topic}/reported", b'{"version": "two"}') == "Success"
    assert dev.publish(f"{topic}/reported", json.dumps({"version": 2})) == "Success"

    async def in_sync() -> bool:
        status = await _config_status(service, alice, did)
        return bool(status["in_sync"])

    await until(in_sync, what="reported version 2 recorded")
    assert (await _config_status(service, alice, did))["reported_version"] == 2

    # A new connection (the device restarted) gets the latest version at once.
    dev.close()
    again = mqtt_connect(did, token)
    assert again.subscribe(topic) == "Granted QoS 1"
    await until(lambda: _has(again, topic, 2), what="latest retained config on reconnect")
    assert [c["version"] for c in _configs(again, topic)] == [2]


async def _has(conn: Any, topic: str, version: int) -> bool:
    return any(c["version"] == version for c in _configs(conn, topic))


async def test_another_device_can_neither_read_nor_report_a_devices_config(
    start_service: Any, start_bridge: Any, users: dict[str, Any], mqtt_connect: Any, tag: str
) -> None:
    alice, bob = users["alice"], users["bob"]
    prefix = f"test/{tag}/"
    service = await start_service(mqtt_topic_prefix=prefix)
    await start_bridge(service.client, mqtt_enabled=True, mqtt_topic_prefix=prefix)
    did, _token = await _device(service, alice, {"settings": {"site": "vault 7"}})
    other, other_token = await _device(service, bob, {})

    spy = mqtt_connect(other, other_token)
    own = f"{prefix}devices/{other}/config"
    # The broker grants config filters (the device role), but delivers the spy only its own.
    assert spy.subscribe(f"{prefix}devices/{did}/config") == "Granted QoS 1"
    assert spy.subscribe(f"{prefix}devices/+/config") == "Granted QoS 1"
    await until(lambda: _has(spy, own, 1), what="the spy's own config")
    r = await service.client.put(
        f"/devices/{did}", json={"config": {"settings": {"site": "vault 8"}}}, headers=alice.headers
    )
    assert r.status_code == 200
    # Its own change as a marker: once that arrived, the other device's would have too.
    r = await service.client.put(
        f"/devices/{other}", json={"config": {"settings": {"x": 1}}}, headers=bob.headers
    )
    await until(lambda: _has(spy, own, 2), what="the spy's own config version 2")
    assert all(t == own for t, _ in spy.messages), spy.messages
    assert b"vault" not in b"".join(p for _, p in spy.messages)

    # Nor can it report for the other device (refused by the broker, nothing recorded).
    reported = f"{prefix}devices/{did}/config/reported"
    assert spy.publish(reported, json.dumps({"version": 1})) == "Not authorized"
    assert (await _config_status(service, alice, did))["reported_version"] is None


async def test_simulator_devices_apply_their_config_and_report_it(
    start_service: Any, start_bridge: Any, users: dict[str, Any], mosquitto: Mosquitto, tag: str
) -> None:
    from simulator.device_mqtt import DeviceMqttTransport
    from simulator.transports import TransportConfig

    alice = users["alice"]
    prefix = f"test/{tag}/"
    service = await start_service(mqtt_topic_prefix=prefix)
    await start_bridge(service.client, mqtt_enabled=True, mqtt_topic_prefix=prefix)
    did, token = await _device(service, alice, {"settings": SETTINGS})
    cfg = TransportConfig(
        kind="mqtt", mqtt_host=mosquitto.host, mqtt_port=mosquitto.port, mqtt_topic_prefix=prefix
    )
    transport = DeviceMqttTransport(cfg, [(did, token)])
    await transport.start()
    try:
        device = transport.devices[did]

        async def reported(version: int) -> bool:
            status = await _config_status(service, alice, did)
            return status["reported_version"] == version and bool(status["in_sync"])

        await until(lambda: reported(1), what="the simulated device reports version 1")
        assert device.config is not None and device.config.settings == SETTINGS
        assert device.sample_interval == 15.0

        new = {"settings": {**SETTINGS, "sample_interval_s": 2.5}}
        r = await service.client.put(f"/devices/{did}", json={"config": new}, headers=alice.headers)
        assert r.status_code == 200, r.text
        await until(lambda: reported(2), what="the simulated device reports version 2")
        assert device.config_version == 2 and device.sample_interval == 2.5
    finally:
        await transport.close()


async def test_simulator_http_devices_poll_their_config_and_report_it(
    service: Any, start_bridge: Any, users: dict[str, Any]
) -> None:
    from simulator.transports import HttpTransport, TransportConfig

    alice = users["alice"]
    bridge = await start_bridge(service.client)
    did, token = await _device(service, alice, {"settings": SETTINGS})
    # Polled by hand here (interval 0: fetched once at start); the bridge's client is the
    # fixture's, closed by it.
    transport = HttpTransport(TransportConfig(kind="http", config_poll_interval=0), [(did, token)])
    transport._client = bridge
    await transport.start()
    status = await _config_status(service, alice, did)
    assert status["reported_version"] == 1 and status["in_sync"] is True
    assert transport.configs[did].config.settings == SETTINGS
    assert transport.sample_intervals == {did: 15.0}

    await transport.poll_configs()  # unchanged: a 304, nothing reported again
    assert (await _config_status(service, alice, did))["reported_version"] == 1

    new = {"settings": {**SETTINGS, "sample_interval_s": 2.5}}
    r = await service.client.put(f"/devices/{did}", json={"config": new}, headers=alice.headers)
    assert r.status_code == 200, r.text
    await transport.poll_configs()
    status = await _config_status(service, alice, did)
    assert status["desired_version"] == status["reported_version"] == 2
    assert status["in_sync"] is True
    assert transport.sample_intervals == {did: 2.5}
    assert transport.config_errors == 0
