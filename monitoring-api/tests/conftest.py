"""Fixtures for the monitoring API: a real store, real Kafka, real tokens, the app over HTTP.

Tokens are RS256 JWTs signed with a throw-away key the app's verifier trusts
(``JWTVerifier.add_key``), exactly as signing issues them. Ownership answers come from a small
device-management stand-in that follows its contract (``GET /devices/{id}`` → 404 for another
owner's device, admins see all) served over HTTP through an ASGI transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from redis.asyncio import Redis

from device_management.config import DeviceManagementSettings
from device_management.main import create_app as create_dm_app
from device_management.migrations import upgrade_sync
from iot_common.auth import JWTVerifier
from iot_common.events import Alert, WindowStats
from iotctl.broker import free_port
from monitoring_api.config import MonitoringApiSettings
from monitoring_api.devices import HttpDeviceDirectory
from monitoring_api.egress import IPAddress
from monitoring_api.main import create_app
from monitoring_store import open_store
from monitoring_store.base import MonitoringStore
from signing.config import SigningSettings
from signing.main import create_app as create_signing_app
from signing.migrations import upgrade_head

KID = "monitoring-test-key"


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class User:
    id: str
    role: str
    token: str
    email: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="session")
def make_user(rsa_key: rsa.RSAPrivateKey) -> Callable[..., User]:
    def make(role: str = "operator", *, ttl: float = 3600, key: Any = None) -> User:
        uid = str(uuid.uuid4())
        now = int(time.time())
        email = f"{uid[:8]}@example.com"
        claims = {
            "sub": uid,
            "email": email,
            "role": role,
            "iat": now,
            "exp": now + int(ttl),
            "jti": secrets.token_hex(8),
            "iss": "iot-signing",
            "aud": "iot-platform",
        }
        token = jwt.encode(claims, key or rsa_key, algorithm="RS256", headers={"kid": KID})
        return User(id=uid, role=role, token=token, email=email)

    return make


@pytest.fixture(scope="session")
def new_alert() -> Callable[..., Alert]:
    """A fresh active alert of ``device`` (owned by ``owner``), as the agents produce one."""

    def make(device: str, owner: str | None, severity: str = "warning") -> Alert:
        now = time.time()
        return Alert(
            alert_id=str(uuid.uuid4()),
            device_id=device,
            rule_id=f"r-{severity}",
            rule_type="threshold",
            severity=severity,
            status="active",
            message=f"{severity} alert",
            started_at=now,
            updated_at=now,
            owner_id=owner,
        )

    return make


@dataclass
class Registry:
    """Devices registered in the real device-management app (in-process, over ASGI)."""

    http: httpx.AsyncClient
    admin: User
    redis: Redis
    namespace: str

    async def add(
        self, owner: User, *, metrics: list[str] | None = None, name: str = "", online: bool = True
    ) -> str:
        body = {
            "name": name or f"dev-{secrets.token_hex(4)}",
            "type": "sensor",
            "config": {"metrics": [{"name": m} for m in (metrics or [])], "rules": []},
            "owner_id": owner.id,
        }
        r = await self.http.post("/devices/", json=body, headers=self.admin.headers)
        assert r.status_code == 201, r.text
        did = str(r.json()["id"])
        if online:  # what the ingest bridge records when the device sends something
            await self.redis.hset(f"{self.namespace}:last_seen", did, str(time.time()))
        return did


@pytest.fixture(scope="session")
def dm_database_url(pg_database_factory: Callable[[str], str]) -> str:
    url = pg_database_factory("dm")
    upgrade_sync(url)
    return url


@pytest.fixture
async def registry(
    dm_database_url: str,
    redis_url: str,
    redis_namespace: str,
    rsa_key: rsa.RSAPrivateKey,
    make_user: Callable[..., User],
) -> AsyncIterator[Registry]:
    """device-management's own app: ownership answers exactly as in production."""
    settings = DeviceManagementSettings(
        database_url=dm_database_url,
        redis_url=redis_url,
        redis_namespace=redis_namespace,
        internal_token="dev-internal-token",
        jwks_url="http://signing.invalid/.well-known/jwks.json",
        relay_enabled=False,
        db_pool_size=5,
    )
    redis = Redis.from_url(redis_url)
    verifier = JWTVerifier(
        jwks_url=settings.jwks_url,
        redis=redis,
        namespace=redis_namespace,
        issuer="iot-signing",
        audience="iot-platform",
        http=httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(404))),
    )
    verifier.add_key(KID, rsa_key.public_key())
    app = create_dm_app(settings, verifier=verifier)
    async with LifespanManager(app, startup_timeout=30) as manager:
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://device-management"
        )
        yield Registry(http=http, admin=make_user("admin"), redis=redis, namespace=redis_namespace)
        await http.aclose()
    await redis.aclose()


@pytest.fixture(scope="session", params=["postgres", "mongodb"])
def store_url(request: pytest.FixtureRequest, store_url_factory: Callable[[str, str], str]) -> str:
    """Every test through the store runs on both backends."""
    return store_url_factory(request.param, "monapi")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[MonitoringStore]:
    st = open_store(store_url)
    await st.start()
    yield st
    await st.close()


@pytest.fixture
def settings_factory(
    kafka_bootstrap: str,
    topic_prefix: str,
    redis_url: str,
    redis_namespace: str,
    store_url: str,
) -> Callable[..., MonitoringApiSettings]:
    def make(**overrides: Any) -> MonitoringApiSettings:
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "topic_prefix": topic_prefix,
            "redis_url": redis_url,
            "redis_namespace": redis_namespace,
            "store_url": store_url,
            "instance_id": f"test-{secrets.token_hex(4)}",
            "webhook_backoff_base": 0.2,
            "webhook_poll_interval": 0.1,
            "fleet_push_interval": 0.5,
            "device_cache_ttl": 0.0,
            # The tests' webhook receivers listen on loopback: an operator's explicit choice.
            "webhook_allow_private_networks": ["127.0.0.0/8", "::1/128"],
        }
        values.update(overrides)
        return MonitoringApiSettings(**values)

    return make


@dataclass
class Running:
    app: FastAPI
    client: httpx.AsyncClient
    url: str | None = None


AppFactory = Callable[..., Awaitable[Running]]


ServeApp = Callable[..., Awaitable[str]]


class TestResolver:
    """Name resolution without DNS: the names a test sets, numeric forms, nothing else.

    Tests may send traffic to loopback only, and a DNS query is traffic: names such as
    ``hooks.example.com`` resolve only to what the test says (``dns`` fixture).
    """

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        if host in self.names:
            return [ipaddress.ip_address(a) for a in self.names[host]]
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
        return [ipaddress.ip_address(info[4][0]) for info in infos]


@pytest.fixture
def dns() -> dict[str, list[str]]:
    """Host name → addresses, as the apps of this test resolve them (change it any time)."""
    return {"localhost": ["127.0.0.1"]}


@pytest.fixture
async def serve_app() -> AsyncIterator[ServeApp]:
    """Serve ASGI apps with uvicorn on free loopback ports; returns each one's base URL."""
    async with contextlib.AsyncExitStack() as stack:

        async def serve(
            app: Any, *, stopped_by: contextlib.AsyncExitStack | None = None, **config: Any
        ) -> str:
            """``stopped_by``: the exit stack that stops it (default: this fixture's)."""
            port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    host="127.0.0.1",
                    port=port,
                    log_level="warning",
                    timeout_graceful_shutdown=2,
                    **config,
                )
            )
            task = asyncio.create_task(server.serve())

            async def stop() -> None:
                server.should_exit = True
                await asyncio.wait_for(task, 15)

            (stopped_by or stack).push_async_callback(stop)
            for _ in range(300):
                if server.started:
                    break
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
            return f"http://127.0.0.1:{port}"

        yield serve


@pytest.fixture
async def app_factory(
    serve_app: ServeApp,
    dns: dict[str, list[str]],
    settings_factory: Callable[..., MonitoringApiSettings],
    registry: Registry,
    rsa_key: rsa.RSAPrivateKey,
    redis_url: str,
    redis_namespace: str,
) -> AsyncIterator[AppFactory]:
    """Start monitoring-api apps: in-process over ASGI, or ``serve=True`` on a real port."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            *,
            serve: bool = False,
            signing_http: httpx.AsyncClient | None = None,
            wait_kafka: bool = True,
            webhook_ssl_context: ssl.SSLContext | None = None,
            **overrides: Any,
        ) -> Running:
            settings = settings_factory(**overrides)
            collaborators: dict[str, Any] = {}
            if webhook_ssl_context is not None:
                collaborators["webhook_ssl_context"] = webhook_ssl_context
            redis = Redis.from_url(redis_url)
            stack.push_async_callback(redis.aclose)
            verifier = JWTVerifier(
                jwks_url="http://signing.invalid/.well-known/jwks.json",
                redis=redis,
                namespace=redis_namespace,
                issuer="iot-signing",
                audience="iot-platform",
                http=httpx.AsyncClient(
                    transport=httpx.MockTransport(lambda r: httpx.Response(404))
                ),
            )
            verifier.add_key(KID, rsa_key.public_key())
            await verifier.start()
            stack.push_async_callback(verifier.close)
            directory = HttpDeviceDirectory(
                "http://device-management",
                internal_token="dev-internal-token",
                http=registry.http,
                cache_ttl=settings.device_cache_ttl,
            )
            app = create_app(
                settings,
                verifier=verifier,
                devices=directory,
                signing_http=signing_http,
                webhook_resolver=TestResolver(dns),
                **collaborators,
            )
            if not serve:
                manager = LifespanManager(app, startup_timeout=30)
                await stack.enter_async_context(manager)
                client = httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=manager.app), base_url="http://monitoring"
                )
                stack.push_async_callback(client.aclose)
                if wait_kafka:
                    await _wait_consumer(app)
                return Running(app=app, client=client)
            # The app resolves forwarded addresses itself, as its entry point runs it.
            url = await serve_app(
                app, stopped_by=stack, ws="websockets-sansio", proxy_headers=False
            )
            client = httpx.AsyncClient(base_url=url, timeout=10)
            stack.push_async_callback(client.aclose)
            await _wait_consumer(app)
            return Running(app=app, client=client, url=url)

        yield start


async def _wait_consumer(app: FastAPI) -> None:
    consumer = getattr(app.state, "consumer", None)
    if consumer is not None:
        await asyncio.wait_for(consumer.ready.wait(), 30)


async def wait_for(
    predicate: Callable[[], Awaitable[Any]] | Callable[[], Any], timeout: float = 15
) -> Any:
    """Poll until ``predicate()`` is truthy (awaiting it if needed); its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
def poll() -> Callable[..., Awaitable[Any]]:
    return wait_for


@pytest.fixture(scope="session")
def signing_db(pg_database_factory: Callable[[str], str]) -> str:
    url = pg_database_factory("signing")
    upgrade_head(url)
    return url


@dataclass
class Signing:
    """The real signing app (in-process), issuing tokens with the key the tests trust."""

    http: httpx.AsyncClient
    admin_token: str = ""

    async def add_user(self, role: str = "operator") -> tuple[User, str]:
        """Create a user through signing's API; returns the user (with a token) and password."""
        email = f"user-{secrets.token_hex(4)}@example.com"
        password = "correct horse battery staple"
        r = await self.http.post(
            "/users/add",
            json={"email": email, "password": password, "role": role},
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        assert r.status_code == 201, r.text
        r = await self.http.post("/users/auth", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        claims = jwt.decode(token, options={"verify_signature": False})
        return User(id=claims["sub"], role=role, token=token, email=email), password

    def client(self) -> httpx.AsyncClient:
        return self.http


@pytest.fixture
def signing_settings(
    signing_db: str, redis_url: str, redis_namespace: str, rsa_key: rsa.RSAPrivateKey, tmp_path: Any
) -> Callable[..., SigningSettings]:
    """Settings of a real signing instance issuing tokens with the key the tests trust."""
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()

    def make(**overrides: Any) -> SigningSettings:
        values: dict[str, Any] = {
            "database_url": signing_db,
            "redis_url": redis_url,
            "redis_namespace": redis_namespace,
            "private_key_pem": pem,
            "key_id": KID,
            "key_file": tmp_path / "unused.pem",
            "bootstrap_admin_email": "admin@example.com",
            "bootstrap_admin_password": "admin-password-for-tests",
            "login_limit_per_address": 10_000,
            "login_limit_per_email": 10_000,
            "argon2_time_cost": 1,
            "argon2_memory_cost_kib": 1024,
            "argon2_parallelism": 1,
        }
        values.update(overrides)
        return SigningSettings(**values)

    return make


async def _signed_in_as_admin(http: httpx.AsyncClient) -> Signing:
    r = await http.post(
        "/users/auth",
        json={"email": "admin@example.com", "password": "admin-password-for-tests"},
    )
    assert r.status_code == 200, r.text
    return Signing(http=http, admin_token=r.json()["access_token"])


@pytest.fixture
async def signing(signing_settings: Callable[..., SigningSettings]) -> AsyncIterator[Signing]:
    app = create_signing_app(signing_settings())
    async with LifespanManager(app, startup_timeout=30) as manager:
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://signing"
        )
        yield await _signed_in_as_admin(http)
        await http.aclose()


@pytest.fixture
async def served_signing(
    serve_app: ServeApp, signing_settings: Callable[..., SigningSettings]
) -> AsyncIterator[Callable[..., Awaitable[tuple[Signing, str]]]]:
    """Real signing instances on loopback ports, run as signing's entry point runs them."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> tuple[Signing, str]:
            settings = signing_settings(**overrides)
            url = await serve_app(
                create_signing_app(settings),
                proxy_headers=True,
                forwarded_allow_ips=settings.forwarded_allow_ips,
            )
            http = httpx.AsyncClient(base_url=url, timeout=10)
            stack.push_async_callback(http.aclose)
            return await _signed_in_as_admin(http), url

        yield start


@pytest.fixture
def store_readings(
    store: MonitoringStore,
) -> Callable[[list[tuple[str, str, float, float]]], Awaitable[None]]:
    """Store ``(device, metric, ts, value)`` readings as the agents would: each in a window of
    its own whose newest reading it is (the fleet table's last values come from windows)."""
    return lambda rows: _store_readings(store, rows)


async def _store_readings(
    store: MonitoringStore, rows: list[tuple[str, str, float, float]]
) -> None:
    await store.upsert_windows(
        [
            WindowStats(
                device_id=d,
                metric=m,
                window_seconds=10,
                window_start=ts - 0.5,
                count=1,
                min=v,
                max=v,
                mean=v,
                stddev=0.0,
                p50=v,
                p95=v,
                last=v,
                last_ts=ts,
                updated_at=time.time(),
            )
            for d, m, ts, v in rows
        ]
    )
