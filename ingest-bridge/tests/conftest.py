"""Fixtures for the bridge's tests: real brokers, per-run names, a device factory, a bus reader."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from asgi_lifespan import LifespanManager
from paho.mqtt.enums import CallbackAPIVersion
from redis.asyncio import Redis

from ingest_bridge.config import IngestBridgeSettings
from ingest_bridge.main import create_app
from iot_common import redis_keys
from iot_common.telemetry import deadletter_decoder, envelope_decoder
from iot_common.topics import Topics
from iotctl.mosquitto import Mosquitto
from iotctl.testinfra import drop_redis_namespace

INTERNAL_TOKEN = "test-internal-token"


@dataclass
class Device:
    id: str
    token: str


class FakeDeviceManagement:
    """Serves ``GET /internal/devices/{id}`` like device-management, from a dict."""

    def __init__(self) -> None:
        self.devices: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                if self.headers.get("X-Internal-Token") != INTERNAL_TOKEN:
                    self._send(401, {"error": {"code": "unauthorized"}})
                    return
                did = self.path.rsplit("/", 1)[-1]
                dev = outer.devices.get(did)
                if not self.path.startswith("/internal/devices/") or dev is None:
                    self._send(404, {"error": {"code": "not_found"}})
                    return
                self._send(200, dev)

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def mqtt_address(mosquitto: Mosquitto) -> tuple[str, int]:
    """The bridge's tests use the session's own Mosquitto (dynamic security, no anonymous)."""
    return mosquitto.address


@dataclass(frozen=True)
class MqttAccount:
    username: str
    password: str


@pytest.fixture(scope="session")
def test_publisher_account(mosquitto: Mosquitto, run_id: str) -> MqttAccount:
    """An MQTT account that may publish anywhere under ``test/``: the tests that feed the bridge
    readings for unknown devices, topics outside the contract or many devices at once, which no
    device account may send (a device publishes only its own topic)."""
    role = f"test-publisher-{run_id}"
    account = MqttAccount(role, secrets.token_urlsafe(16))
    mosquitto.control(
        [
            {
                "command": "createRole",
                "rolename": role,
                "acls": [
                    {"acltype": "publishClientSend", "topic": "test/#", "allow": True},
                ],
            },
            {
                "command": "createClient",
                "username": account.username,
                "password": account.password,
                "roles": [{"rolename": role}],
            },
        ]
    )
    return account


@pytest.fixture(scope="session")
def fake_dm() -> Iterator[FakeDeviceManagement]:
    dm = FakeDeviceManagement()
    yield dm
    dm.close()


_CREATED: list[dict[str, str]] = []


@pytest.fixture(scope="session", autouse=True)
def _cleanup_infra(redis_url: str, redis_namespace: str, rabbitmq_url: str) -> Iterator[None]:
    """At the end: drop this run's RabbitMQ queues/exchanges and Redis keys."""
    yield

    async def cleanup() -> None:
        import aio_pika

        conn = await aio_pika.connect(rabbitmq_url)
        for n in _CREATED:
            for kind, name in (
                ("queue", n["amqp_queue"]),
                ("queue", n["device_events_queue"]),
                ("exchange", n["telemetry_exchange"]),
                ("exchange", n["device_events_exchange"]),
            ):
                channel = await conn.channel()
                try:
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                    await channel.close()
                except Exception:
                    pass
        await conn.close()

    asyncio.run(cleanup())
    drop_redis_namespace(redis_url, redis_namespace)


@pytest.fixture
def names(run_id: str) -> dict[str, str]:
    """Names unique to this test (MQTT client/session, queues, exchanges, topic prefixes)."""
    tag = f"{run_id}{secrets.token_hex(3)}"
    created = {
        "tag": tag,
        "topic_prefix": f"t{tag}.",
        "mqtt_topic_prefix": f"test/{tag}/",
        "mqtt_client_id": f"ib-test-{tag}",
        "mqtt_share_group": f"g{tag}",
        "telemetry_exchange": f"telemetry.{tag}",
        "device_events_exchange": f"device.events.{tag}",
        "amqp_queue": f"ib.telemetry.{tag}",
        "device_events_queue": f"ib.device-events.{tag}",
    }
    _CREATED.append(created)
    return created


@pytest.fixture
def make_settings(
    names: dict[str, str],
    kafka_bootstrap: str,
    redis_url: str,
    redis_namespace: str,
    rabbitmq_url: str,
    mqtt_address: tuple[str, int],
    fake_dm: FakeDeviceManagement,
) -> Callable[..., IngestBridgeSettings]:
    def make(**overrides: Any) -> IngestBridgeSettings:
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "redis_url": redis_url,
            "redis_namespace": redis_namespace,
            "rabbitmq_url": rabbitmq_url,
            "mqtt_host": mqtt_address[0],
            "mqtt_port": mqtt_address[1],
            "device_management_url": fake_dm.url,
            "internal_token": INTERNAL_TOKEN,
            "mqtt_session_expiry": 120,
            "kafka_linger_ms": 2,
            **{k: v for k, v in names.items() if k != "tag"},
        }
        values.update(overrides)
        return IngestBridgeSettings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., IngestBridgeSettings]) -> IngestBridgeSettings:
    return make_settings()


def settings_env(s: IngestBridgeSettings) -> dict[str, str]:
    """The settings as ``INGEST_BRIDGE_*`` variables, for running the bridge as a subprocess."""
    env = {}
    for key, value in s.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"INGEST_BRIDGE_{key.upper()}"] = str(value)
    return env


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def device_factory(redis: Redis, redis_namespace: str) -> Callable[..., Awaitable[Device]]:
    """Create a device in the Redis device cache (as device-management would write it)."""

    async def make(*, active: bool = True, cached: bool = True) -> Device:
        did = str(uuid.uuid4())
        token = secrets.token_urlsafe(32)
        if cached:
            await redis.hset(
                redis_keys.device_cache(redis_namespace, did),
                mapping={
                    "exists": "1",
                    "active": "1" if active else "0",
                    "owner_id": str(uuid.uuid4()),
                    "token_hash": hashlib.sha256(token.encode()).hexdigest(),
                    "config_version": "1",
                    "type": "sensor",
                },
            )
        return Device(did, token)

    return make


@pytest.fixture
async def app_client(
    settings: IngestBridgeSettings,
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The bridge running in-process; an HTTP client on its app and the app itself."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            await wait_for(lambda: _ready(client), timeout=30, what="bridge ready")
            yield client, app


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/ready")).status_code == 200


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 20, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def create_topics(bootstrap: str, topics: Topics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        wanted = [topics.telemetry_raw, topics.telemetry_deadletter, topics.device_events]
        existing = set(await admin.list_topics())
        new = [NewTopic(t, num_partitions=3, replication_factor=1) for t in wanted]
        new = [t for t in new if t.name not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


class BusReader:
    """Reads ``telemetry.raw`` and ``telemetry.deadletter`` of this test's topic prefix."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.consumer = AIOKafkaConsumer(
            topics.telemetry_raw,
            topics.telemetry_deadletter,
            topics.device_events,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
        )
        self.raw: list[Any] = []
        self.raw_keys: list[bytes | None] = []
        self.dead: list[Any] = []
        self.events: list[tuple[bytes | None, bytes]] = []

    async def poll(self) -> None:
        batches = await self.consumer.getmany(timeout_ms=200)
        for tp, msgs in batches.items():
            for m in msgs:
                assert m.value is not None
                if tp.topic == self.topics.telemetry_raw:
                    self.raw.append(envelope_decoder.decode(m.value))
                    self.raw_keys.append(m.key)
                elif tp.topic == self.topics.telemetry_deadletter:
                    self.dead.append(deadletter_decoder.decode(m.value))
                else:
                    self.events.append((m.key, m.value))

    async def until(self, check: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.poll()
            if check():
                return
        raise AssertionError(
            f"timed out waiting for {what}: raw={len(self.raw)} dead={len(self.dead)} "
            f"events={len(self.events)}"
        )

    def readings(self, device_id: str | None = None) -> list[Any]:
        return [r for env in self.raw if device_id in (None, env.device_id) for r in env.readings]

    def reasons(self) -> list[str]:
        return [d.reason for d in self.dead]


@pytest.fixture
async def bus(kafka_bootstrap: str, settings: IngestBridgeSettings) -> AsyncIterator[BusReader]:
    reader = BusReader(kafka_bootstrap, settings.topics)
    await create_topics(kafka_bootstrap, settings.topics)
    await reader.consumer.start()
    yield reader
    await reader.consumer.stop()


class Publisher:
    """A QoS 1 MQTT v5 publisher (paho, network loop in a thread)."""

    def __init__(
        self,
        host: str,
        port: int,
        account: MqttAccount | None = None,
        *,
        client_id: str = "",
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if account is not None:
            self.client.username_pw_set(account.username, account.password)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: Any, qos: int = 1) -> None:
        if not isinstance(payload, bytes | str):
            payload = json.dumps(payload)
        self.infos.append(self.client.publish(topic, payload, qos=qos))

    def flush(self, timeout: float = 30) -> None:
        """Wait until the broker acknowledged everything published so far."""
        for info in self.infos:
            info.wait_for_publish(timeout=timeout)
        self.infos.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def publisher(
    mqtt_address: tuple[str, int], test_publisher_account: MqttAccount
) -> Iterator[Publisher]:
    pub = Publisher(*mqtt_address, test_publisher_account)
    yield pub
    pub.close()


@pytest.fixture
def tools() -> SimpleNamespace:
    """Helpers for tests that build their own bridge, publisher or bus reader."""
    return SimpleNamespace(
        settings_env=settings_env,
        BusReader=BusReader,
        create_topics=create_topics,
        Publisher=Publisher,
        wait_for=wait_for,
    )
