"""Fixtures: a migrated database per module, the app wired to real Redis/RabbitMQ, test tokens."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from redis.asyncio import Redis

from device_management.config import DeviceManagementSettings
from device_management.main import create_app
from device_management.migrations import upgrade_sync
from iot_common.auth import JWTVerifier
from iot_common.events import DeviceEvent, device_event_decoder
from iotctl.mosquitto import Mosquitto
from iotctl.testinfra import drop_redis_namespace

KID = "test-key-1"
ISSUER = "iot-signing"
AUDIENCE = "iot-platform"


@pytest.fixture(scope="session")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class User:
    id: str
    role: str
    token: str
    jti: str
    exp: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="session")
def make_user(signing_key: rsa.RSAPrivateKey) -> Callable[..., User]:
    """Sign a token like the signing service does (RS256, kid, iss/aud, role, jti)."""

    def make(role: str = "operator", *, user_id: str | None = None, ttl: int = 3600) -> User:
        uid = user_id or str(uuid.uuid4())
        now = int(time.time())
        jti = secrets.token_hex(16)
        claims = {
            "sub": uid,
            "email": f"{uid[:8]}@example.com",
            "role": role,
            "iat": now,
            "exp": now + ttl,
            "jti": jti,
            "iss": ISSUER,
            "aud": AUDIENCE,
        }
        token = jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": KID})
        return User(id=uid, role=role, token=token, jti=jti, exp=now + ttl)

    return make


@pytest.fixture(scope="module")
def database_url(pg_database_factory: Any) -> str:
    url: str = pg_database_factory("dm")
    upgrade_sync(url)
    return url


@pytest.fixture
def exchange_name(run_id: str) -> str:
    return f"dm-test-{run_id}-{secrets.token_hex(4)}"


@pytest.fixture
def settings_factory(
    database_url: str,
    redis_url: str,
    redis_namespace: str,
    rabbitmq_url: str,
    exchange_name: str,
    mosquitto: Mosquitto,
) -> Callable[..., DeviceManagementSettings]:
    def make(**overrides: Any) -> DeviceManagementSettings:
        values: dict[str, Any] = {
            # Device accounts on this session's Mosquitto, as the service keeps them.
            "mqtt_provisioning": True,
            "mqtt_host": mosquitto.host,
            "mqtt_port": mosquitto.port,
            "database_url": database_url,
            "redis_url": redis_url,
            "redis_namespace": redis_namespace,
            "rabbitmq_url": rabbitmq_url,
            "device_events_exchange": exchange_name,
            "jwks_url": "http://127.0.0.1:9/.well-known/jwks.json",
            "internal_token": "test-internal-token",
            "outbox_poll_interval": 0.2,
            "relay_max_backoff_seconds": 0.5,
            "rabbitmq_connect_timeout": 2.0,
            "db_pool_size": 5,
        }
        values.update(overrides)
        return DeviceManagementSettings(**values)

    return make


@pytest.fixture(scope="session", autouse=True)
def _forget_redis_namespace(redis_url: str, redis_namespace: str) -> Iterator[None]:
    """Remove this run's Redis keys (cache entries, last-seen hash, revocations) at the end."""
    yield
    drop_redis_namespace(redis_url, redis_namespace)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@dataclass
class Service:
    app: FastAPI
    client: httpx.AsyncClient
    settings: DeviceManagementSettings
    verifier: JWTVerifier


@pytest.fixture
async def start_service(
    settings_factory: Callable[..., DeviceManagementSettings],
    signing_key: rsa.RSAPrivateKey,
    redis: Redis,
) -> AsyncIterator[Callable[..., Any]]:
    """Start the app in-process (lifespan and all) with a verifier trusting the test key."""
    stack: list[Any] = []

    async def start(**overrides: Any) -> Service:
        settings = settings_factory(**overrides)
        verifier = JWTVerifier(
            jwks_url=settings.jwks_url,
            redis=redis,
            namespace=settings.redis_namespace,
            issuer=ISSUER,
            audience=AUDIENCE,
            jwks_min_refresh=3600,
        )
        verifier.add_key(KID, signing_key.public_key())
        app = create_app(settings, verifier=verifier)
        manager = LifespanManager(app, startup_timeout=20, shutdown_timeout=20)
        await manager.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://dm.test"
        )
        stack.append((manager, client))
        return Service(app=app, client=client, settings=settings, verifier=verifier)

    yield start
    while stack:
        manager, client = stack.pop()
        await client.aclose()
        await manager.__aexit__(None, None, None)
    await _delete_exchange(settings_factory())


async def _delete_exchange(settings: DeviceManagementSettings) -> None:
    """The relay declares the (durable) test exchange; don't leave it behind in RabbitMQ."""
    try:
        connection = await aio_pika.connect(settings.rabbitmq_url.get_secret_value())
    except Exception:
        return
    try:
        channel = await connection.channel()
        await channel.exchange_delete(settings.device_events_exchange)
    except Exception:
        pass
    finally:
        await connection.close()


@pytest.fixture
async def service(start_service: Callable[..., Any]) -> Service:
    svc: Service = await start_service()
    return svc


@dataclass
class EventSink:
    """A queue bound to the test's exchange; collects every device event published to it."""

    received: list[tuple[aio_pika.abc.AbstractIncomingMessage, DeviceEvent]] = field(
        default_factory=list
    )

    def events(self, device_id: str | None = None) -> list[DeviceEvent]:
        return [e for _, e in self.received if device_id is None or e.device_id == device_id]

    async def wait_for(
        self, predicate: Callable[[list[DeviceEvent]], bool], timeout: float = 15.0
    ) -> list[DeviceEvent]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.events()):
                return self.events()
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out; got {[e.event_type for e in self.events()]}")


@pytest.fixture
async def event_sink(rabbitmq_url: str, exchange_name: str) -> AsyncIterator[EventSink]:
    connection = await aio_pika.connect(rabbitmq_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key="#")
    sink = EventSink()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        sink.received.append((message, device_event_decoder.decode(message.body)))
        await message.ack()

    await queue.consume(on_message)
    yield sink
    await queue.delete(if_unused=False, if_empty=False)
    await exchange.delete()
    await connection.close()


@pytest.fixture
def users(make_user: Callable[..., User]) -> dict[str, User]:
    return {
        "alice": make_user("operator"),
        "bob": make_user("operator"),
        "viewer": make_user("viewer"),
        "admin": make_user("admin"),
    }


def _device_body(name: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name or f"dev-{secrets.token_hex(4)}",
        "type": "thermometer",
        "config": {
            "metrics": [{"name": "temperature", "unit": "C", "min": -40, "max": 125}],
            "rules": [
                {
                    "type": "threshold",
                    "id": "too-hot",
                    "metric": "temperature",
                    "op": "above",
                    "value": 80,
                    "consecutive_windows": 3,
                    "severity": "critical",
                }
            ],
        },
    }
    body.update(extra)
    return body


@pytest.fixture
def device_body() -> Callable[..., dict[str, Any]]:
    """A valid registration body (random name unless given)."""
    return _device_body
