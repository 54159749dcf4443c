"""Fixtures for signing's tests: a migrated database, cheap Argon2, an app behind HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from redis.asyncio import Redis

from iot_common.auth import JWTVerifier
from iotctl.testinfra import drop_redis_namespace, free_port
from signing.config import SigningSettings
from signing.main import create_app
from signing.migrations import upgrade_head

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-for-tests"
TEST_KID = "test-key-1"

# Cheap Argon2 parameters: the tests are about behaviour, not hashing cost.
FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_cost_kib": 1024, "argon2_parallelism": 1}


@pytest.fixture(scope="session")
def signing_db(pg_database_factory: Callable[[str], str]) -> str:
    url = pg_database_factory("signing")
    upgrade_head(url)
    return url


@pytest.fixture(scope="session")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def private_key_pem(private_key: rsa.RSAPrivateKey) -> str:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def namespace(redis_url: str, redis_namespace: str) -> Iterator[str]:
    """A Redis key namespace of this test alone (rate-limit counters start at zero)."""
    ns = f"{redis_namespace}-{secrets.token_hex(3)}"
    yield ns
    drop_redis_namespace(redis_url, ns)


@pytest.fixture
def make_settings(
    signing_db: str, redis_url: str, namespace: str, private_key_pem: str, tmp_path: Path
) -> Callable[..., SigningSettings]:
    def make(**overrides: Any) -> SigningSettings:
        values: dict[str, Any] = {
            "database_url": signing_db,
            "redis_url": redis_url,
            "redis_namespace": namespace,
            "private_key_pem": SecretStr(private_key_pem),
            "key_id": TEST_KID,
            "key_file": tmp_path / "unused-key.pem",
            "bootstrap_admin_email": ADMIN_EMAIL,
            "bootstrap_admin_password": SecretStr(ADMIN_PASSWORD),
            "login_limit_per_address": 1000,
            "login_free_failures": 1000,
            "register_limit_per_address": 1000,
            **FAST_ARGON2,
        }
        values.update(overrides)
        return SigningSettings(**values)

    return make


@contextlib.asynccontextmanager
async def serve_in_process(
    settings: SigningSettings, *, client_address: str = "127.0.0.1"
) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app (lifespan included) and talk to it over HTTP through ASGI."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=(client_address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://signing") as client:
            yield client


@pytest.fixture
async def client(make_settings: Callable[..., SigningSettings]) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_in_process(make_settings()) as c:
        yield c


@dataclass
class Api:
    """Small helpers over the HTTP API, so tests read as what a user does."""

    client: httpx.AsyncClient
    admin_email: str = ADMIN_EMAIL
    admin_password: str = ADMIN_PASSWORD
    kid: str = TEST_KID

    unique_email = staticmethod(lambda prefix="user": unique_email(prefix))
    bearer = staticmethod(lambda token: bearer(token))

    async def register(
        self, email: str | None = None, password: str = "correct horse battery", **extra: Any
    ) -> httpx.Response:
        email = unique_email() if email is None else email
        return await self.post("/users/add", {"email": email, "password": password, **extra})

    async def login(self, email: str, password: str) -> httpx.Response:
        return await self.post("/users/auth", {"email": email, "password": password})

    async def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        """POST JSON as ASCII with escapes, so lone surrogates ("\\ud800") can be sent too."""
        headers = {"content-type": "application/json", **kw.pop("headers", {})}
        return await self.client.post(path, content=json.dumps(body), headers=headers, **kw)

    async def token(self, email: str, password: str) -> str:
        resp = await self.login(email, password)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["access_token"])

    async def admin_token(self) -> str:
        return await self.token(ADMIN_EMAIL, ADMIN_PASSWORD)

    async def user_token(self, role: str = "viewer") -> tuple[str, str]:
        """Create a user of ``role`` (through the admin) and log in; returns (email, token)."""
        email, password = unique_email(), "a perfectly fine password"
        admin = await self.admin_token()
        resp = await self.client.post(
            "/users/add",
            json={"email": email, "password": password, "role": role},
            headers=bearer(admin),
        )
        assert resp.status_code == 201, resp.text
        return email, await self.token(email, password)


@pytest.fixture
def api(client: httpx.AsyncClient) -> Api:
    return Api(client)


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{secrets.token_hex(5)}@example.com"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class SigningProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@pytest.fixture(scope="session")
def signing_process(
    signing_db: str,
    redis_url: str,
    redis_namespace: str,
    private_key_pem: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SigningProcess]:
    """The real entry point (``python -m signing serve``) on a free port."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("signing") / "signing.log"
    env = {
        **os.environ,
        "IOT_REDIS_URL": redis_url,
        "IOT_REDIS_NAMESPACE": f"{redis_namespace}-proc",
        "SIGNING_DATABASE_URL": signing_db,
        "SIGNING_PRIVATE_KEY_PEM": private_key_pem,
        "SIGNING_KEY_ID": TEST_KID,
        "SIGNING_BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
        "SIGNING_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "SIGNING_LOGIN_LIMIT_PER_ADDRESS": "100000",
        "SIGNING_LOGIN_FREE_FAILURES": "100000",
        "SIGNING_REGISTER_LIMIT_PER_ADDRESS": "100000",
        **{f"SIGNING_{k.upper()}": str(v) for k, v in FAST_ARGON2.items()},
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "signing", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"signing exited early:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"signing did not become healthy:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield SigningProcess(url=url, process=proc, log_path=log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def serve(
    make_settings: Callable[..., SigningSettings],
) -> Callable[..., contextlib.AbstractAsyncContextManager[Api]]:
    """Start another app instance with some settings changed: ``async with serve(x=1) as api``."""

    @contextlib.asynccontextmanager
    async def start(*, client_address: str = "127.0.0.1", **overrides: Any) -> AsyncIterator[Api]:
        async with serve_in_process(make_settings(**overrides), client_address=client_address) as c:
            yield Api(c)

    return start


@pytest.fixture
async def other_service_of(redis_url: str, namespace: str) -> AsyncIterator[Callable[..., Any]]:
    """Another service's verifier, fetching JWKS from signing over its HTTP API."""
    redis = Redis.from_url(redis_url)
    made: list[JWTVerifier] = []

    async def make(api: Api, **options: Any) -> JWTVerifier:
        verifier = JWTVerifier(
            jwks_url="http://signing/.well-known/jwks.json",
            redis=redis,
            namespace=namespace,
            issuer="iot-signing",
            audience="iot-platform",
            http=api.client,
            **options,
        )
        await verifier.start()
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()
    await redis.aclose()
