"""The signing service's FastAPI app: users, tokens, revocation, JWKS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, ProgrammingError

from iot_common import redis_keys
from iot_common.auth import JWTVerifier, publish_revocations
from iot_common.web import install_common
from signing import crud
from signing.api.routes import health, jwks, users
from signing.bootstrap import ensure_bootstrap_admin
from signing.config import SigningSettings, get_settings
from signing.db import make_engine, make_sessionmaker, safe_url
from signing.keys import KeyRing, KeyRingError, ensure_key
from signing.ratelimit import FixedWindowLimit, LoginLimiter
from signing.security import Passwords, TokenIssuer
from signing.state import AppState

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """A dependency signing cannot start without is missing; the message says how to fix it."""


def _own_jwks_client(keys: KeyRing) -> httpx.AsyncClient:
    """Signing's own verifier reads the key ring, re-read first when a token names a new kid."""

    async def jwks(_request: httpx.Request) -> httpx.Response:
        # Another replica may have just taken a configured key into the ring.
        await keys.reload()
        return httpx.Response(200, json={"keys": keys.published()})

    return httpx.AsyncClient(transport=httpx.MockTransport(jwks))


def build_state(settings: SigningSettings) -> AppState:
    engine = make_engine(
        settings.database_url.get_secret_value(), pool_size=settings.database_pool_size
    )
    redis = Redis.from_url(settings.redis_url)
    sessions = make_sessionmaker(engine)
    keys = KeyRing(sessions=sessions, passphrase=settings.key_passphrase.get_secret_value())
    verifier = JWTVerifier(
        jwks_url="http://signing.internal/.well-known/jwks.json",
        redis=redis,
        namespace=settings.redis_namespace,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        http=_own_jwks_client(keys),
        jwks_refresh_interval=settings.key_reload_seconds,
    )
    return AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        redis=redis,
        passwords=Passwords(settings),
        keys=keys,
        issuer=TokenIssuer(
            keys.signing_key,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_seconds=settings.token_ttl_seconds,
        ),
        verifier=verifier,
        limiter=LoginLimiter(
            redis,
            namespace=settings.redis_namespace,
            per_address=settings.login_limit_per_address,
            window_seconds=settings.login_limit_window_seconds,
            free_failures=settings.login_free_failures,
            delay_base_seconds=settings.login_delay_base_seconds,
            delay_max_seconds=settings.login_delay_max_seconds,
        ),
        registrations=FixedWindowLimit(
            redis,
            namespace=settings.redis_namespace,
            scope="register-address",
            limit=settings.register_limit_per_address,
            window_seconds=settings.register_limit_window_seconds,
        ),
    )


async def republish_revocations_if_lost(state: AppState) -> int:
    """Re-publish PostgreSQL's revocations when Redis no longer has them; how many it did."""
    namespace = state.settings.redis_namespace
    if await state.redis.exists(redis_keys.revocation_stream(namespace)):
        return 0
    async with state.sessions() as session:
        revoked = await crud.active_revocations(session)
    if revoked:
        await publish_revocations(state.redis, namespace=namespace, revoked=revoked)
        log.warning(
            "Redis had lost the revocation stream: re-published %d revocations", len(revoked)
        )
    return len(revoked)


async def _keep_revocations_published(state: AppState) -> None:
    while True:
        try:
            await republish_revocations_if_lost(state)
        except (RedisError, DBAPIError, OSError) as exc:
            log.warning("could not check the revocation stream: %s", exc)
        await asyncio.sleep(state.settings.revocation_check_seconds)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel until done: redis-py can swallow a cancellation that lands while it connects."""
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.05)


async def _reload_keys(state: AppState) -> None:
    """Re-read the key ring now and then, so a rotation reaches this replica's issuer."""
    while True:
        await asyncio.sleep(state.settings.key_reload_seconds)
        try:
            await state.keys.reload()
            # What JWKS now publishes is exactly what this replica's own checks accept.
            state.verifier.set_keys(state.keys.public_keys())
        except (DBAPIError, OSError, KeyRingError) as exc:
            # Keep signing with the keys already known; the next reload tries again.
            log.warning("could not re-read the signing key ring: %s", exc)


def create_app(settings: SigningSettings | None = None) -> FastAPI:
    """Build the app; its lifespan connects PostgreSQL and Redis and ensures the admin user."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings)
        background: list[asyncio.Task[None]] = []
        try:
            try:
                await ensure_bootstrap_admin(settings, state.sessions, state.passwords)
                await ensure_key(state.sessions, settings)
            except ProgrammingError as exc:
                raise StartupError(
                    "signing's tables are missing: run `signing migrate` first"
                ) from exc
            except (DBAPIError, OSError) as exc:
                raise StartupError(
                    f"cannot reach PostgreSQL at {safe_url(settings.database_url)}: {exc}"
                ) from exc
            await state.keys.reload()
            await state.verifier.start()
            background = [
                asyncio.create_task(_reload_keys(state), name="key-ring-reload"),
                asyncio.create_task(_keep_revocations_published(state), name="revocations"),
            ]
            app.state.signing = state
            log.info("signing ready; signing key %s", state.keys.signing_key().kid)
            yield
        finally:
            await _stop(background)
            await state.verifier.close()
            await state.redis.aclose()
            await state.engine.dispose()

    app = FastAPI(
        title="signing",
        summary="Users, passwords and tokens of the IoT platform",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_common(app, service="signing", max_body_bytes=settings.max_body_bytes)
    app.include_router(users.router)
    app.include_router(jwks.router)
    app.include_router(health.router)
    _document_password_limits(app, settings)
    return app


def _document_password_limits(app: FastAPI, settings: SigningSettings) -> None:
    """Publish the configured password lengths (checked per request) in the OpenAPI schema."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            props = schema["components"]["schemas"]["UserCreate"]["properties"]["password"]
            props["minLength"] = settings.password_min_length
            props["maxLength"] = settings.password_max_length
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
