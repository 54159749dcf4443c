"""Fixtures for the monitoring API: a real store, real Kafka, real tokens, the app over HTTP.

Tokens are RS256 JWTs signed with a throw-away key the app's verifier trusts
(``JWTVerifier.add_key``), exactly as signing issues them. Ownership answers come from a small
device-management stand-in that follows its contract (``GET /devices/{id}`` → 404 for another
owner's device, admins see all) served over HTTP through an ASGI transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis

from iot_common.auth import JWTVerifier
from iotctl.broker import free_port
from monitoring_api.config import MonitoringApiSettings
from monitoring_api.devices import HttpDeviceDirectory
from monitoring_api.main import create_app
from monitoring_store import open_store
from monitoring_store.base import MonitoringStore

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


@dataclass
class Registry:
    """The device-management stand-in's devices (id → device JSON)."""

    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: int = 0

    def add(self, owner: User, *, metrics: list[str] | None = None, name: str = "") -> str:
        did = str(uuid.uuid4())
        self.devices[did] = {
            "id": did,
            "name": name or f"dev-{did[:6]}",
            "type": "sensor",
            "config": {"metrics": [{"name": m} for m in (metrics or [])], "rules": []},
            "active": True,
            "status": "online",
            "last_seen": time.time(),
            "owner_id": owner.id,
            "config_version": 1,
        }
        return did


def device_management_app(registry: Registry, rsa_key: rsa.RSAPrivateKey) -> FastAPI:
    """Device-management's read contract: own devices only (404 otherwise), admins see all."""
    app = FastAPI()
    public = rsa_key.public_key()

    def caller(authorization: str | None) -> dict[str, Any] | None:
        if not authorization:
            return None
        try:
            return jwt.decode(
                authorization.split(" ", 1)[1],
                public,
                algorithms=["RS256"],
                audience="iot-platform",
            )
        except jwt.PyJWTError:
            return None

    @app.get("/devices/{device_id}")
    async def get_device(device_id: str, authorization: str | None = Header(None)) -> Any:
        registry.calls += 1
        claims = caller(authorization)
        if claims is None:
            return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
        dev = registry.devices.get(device_id)
        if dev is None or (claims["role"] != "admin" and dev["owner_id"] != claims["sub"]):
            return JSONResponse({"error": {"code": "not_found"}}, status_code=404)
        return dev

    @app.get("/devices/")
    async def list_devices(
        request: Request, authorization: str | None = Header(None), limit: int = 50, offset: int = 0
    ) -> Any:
        registry.calls += 1
        claims = caller(authorization)
        if claims is None:
            return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
        mine = [
            d
            for d in registry.devices.values()
            if claims["role"] == "admin" or d["owner_id"] == claims["sub"]
        ]
        return {"items": mine[offset : offset + limit], "total": len(mine)}

    @app.get("/internal/devices/{device_id}")
    async def internal(device_id: str, x_internal_token: str | None = Header(None)) -> Any:
        if x_internal_token != "dev-internal-token":
            return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
        dev = registry.devices.get(device_id)
        if dev is None:
            return JSONResponse({"error": {"code": "not_found"}}, status_code=404)
        return {"id": device_id, "owner_id": dev["owner_id"], "active": True}

    return app


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture(scope="session")
def store_url(pg_database_factory: Callable[[str], str]) -> str:
    return pg_database_factory("monapi")


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


@pytest.fixture
async def app_factory(
    settings_factory: Callable[..., MonitoringApiSettings],
    registry: Registry,
    rsa_key: rsa.RSAPrivateKey,
    redis_url: str,
    redis_namespace: str,
) -> AsyncIterator[AppFactory]:
    """Start monitoring-api apps: in-process over ASGI, or ``serve=True`` on a real port."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            *, serve: bool = False, signing_http: httpx.AsyncClient | None = None, **overrides: Any
        ) -> Running:
            settings = settings_factory(**overrides)
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
            dm_http = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=device_management_app(registry, rsa_key)),
                base_url="http://device-management",
            )
            stack.push_async_callback(dm_http.aclose)
            directory = HttpDeviceDirectory(
                "http://device-management",
                internal_token="dev-internal-token",
                http=dm_http,
                cache_ttl=settings.device_cache_ttl,
            )
            app = create_app(
                settings, verifier=verifier, devices=directory, signing_http=signing_http
            )
            if not serve:
                manager = LifespanManager(app, startup_timeout=30)
                await stack.enter_async_context(manager)
                client = httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=manager.app), base_url="http://monitoring"
                )
                stack.push_async_callback(client.aclose)
                await _wait_consumer(app)
                return Running(app=app, client=client)
            port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    host="127.0.0.1",
                    port=port,
                    log_level="warning",
                    ws="websockets-sansio",
                    timeout_graceful_shutdown=2,
                )
            )
            task = asyncio.create_task(server.serve())

            async def stop() -> None:
                server.should_exit = True
                await asyncio.wait_for(task, 15)

            stack.push_async_callback(stop)
            url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                if server.started:
                    break
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
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


@dataclass
class SigningStandIn:
    """Signing's ``POST /users/auth`` contract for known users (email + password → token)."""

    users: dict[str, tuple[str, User]] = field(default_factory=dict)

    def add(self, user: User, password: str) -> None:
        self.users[user.email] = (password, user)

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or request.url.path != "/users/auth":
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})
        try:
            body = json.loads(request.content)
            password, user = self.users[body["email"]]
        except (ValueError, KeyError, TypeError):
            return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "no"}})
        if body.get("password") != password:
            return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "no"}})
        return httpx.Response(
            200, json={"access_token": user.token, "token_type": "bearer", "expires_in": 3600}
        )

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.MockTransport(self.handler), base_url="http://signing"
        )


@pytest.fixture
def signing() -> SigningStandIn:
    return SigningStandIn()
