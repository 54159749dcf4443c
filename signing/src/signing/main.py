"""The signing service's FastAPI app: users, tokens, revocation, JWKS."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.exc import DBAPIError, ProgrammingError

from iot_common.auth import JWTVerifier
from iot_common.web import install_common
from signing.api.routes import health, jwks, users
from signing.bootstrap import ensure_bootstrap_admin
from signing.config import SigningSettings, get_settings
from signing.db import make_engine, make_sessionmaker, safe_url
from signing.ratelimit import LoginLimiter
from signing.security import Passwords, SigningKey, TokenIssuer
from signing.state import AppState

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """A dependency signing cannot start without is missing; the message says how to fix it."""


def _own_jwks_client(key: SigningKey) -> httpx.AsyncClient:
    # Signing verifies with its own key; its verifier never needs to fetch JWKS over the network.
    jwks_body = {"keys": [key.public_jwk()]}
    return httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _request: httpx.Response(200, json=jwks_body))
    )


def build_state(settings: SigningSettings) -> AppState:
    engine = make_engine(settings.database_url, pool_size=settings.database_pool_size)
    redis = Redis.from_url(settings.redis_url)
    key = SigningKey.from_settings(settings)
    verifier = JWTVerifier(
        jwks_url="http://signing.internal/.well-known/jwks.json",
        redis=redis,
        namespace=settings.redis_namespace,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        http=_own_jwks_client(key),
    )
    verifier.add_key(key.kid, key.public_key)
    return AppState(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        redis=redis,
        passwords=Passwords(settings),
        key=key,
        issuer=TokenIssuer(
            key,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_seconds=settings.token_ttl_seconds,
        ),
        verifier=verifier,
        limiter=LoginLimiter(
            redis,
            namespace=settings.redis_namespace,
            per_address=settings.login_limit_per_address,
            per_email=settings.login_limit_per_email,
            window_seconds=settings.login_limit_window_seconds,
        ),
    )


def create_app(settings: SigningSettings | None = None) -> FastAPI:
    """Build the app; its lifespan connects PostgreSQL and Redis and ensures the admin user."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings)
        try:
            try:
                await ensure_bootstrap_admin(settings, state.sessions, state.passwords)
            except ProgrammingError as exc:
                raise StartupError(
                    "signing's tables are missing: run `signing migrate` first"
                ) from exc
            except (DBAPIError, OSError) as exc:
                raise StartupError(
                    f"cannot reach PostgreSQL at {safe_url(settings.database_url)}: {exc}"
                ) from exc
            await state.verifier.start()
            app.state.signing = state
            log.info("signing ready; key id %s", state.key.kid)
            yield
        finally:
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
