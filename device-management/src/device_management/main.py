"""The device-management app factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from device_management.api.routes import devices, health, internal
from device_management.cache import DeviceCache
from device_management.config import DeviceManagementSettings, get_settings
from device_management.db import make_engine, make_read_sessionmaker, make_sessionmaker
from device_management.outbox import OutboxRelay
from iot_common.auth import JWTVerifier
from iot_common.web import install_common

log = logging.getLogger(__name__)

SERVICE = "device-management"


def create_app(
    settings: DeviceManagementSettings | None = None,
    *,
    verifier: JWTVerifier | None = None,
) -> FastAPI:
    """Build the app. ``verifier`` replaces the JWKS-backed one (the app starts and closes it)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        redis = Redis.from_url(settings.redis_url)
        jwt_verifier = verifier or JWTVerifier(
            jwks_url=settings.jwks_url,
            redis=redis,
            namespace=settings.redis_namespace,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        sessionmaker = make_sessionmaker(engine)
        relay = None
        if settings.relay_enabled:
            relay = OutboxRelay(
                sessionmaker=sessionmaker,
                rabbitmq_url=settings.rabbitmq_url.get_secret_value(),
                exchange=settings.device_events_exchange,
                batch_size=settings.outbox_batch_size,
                poll_interval=settings.outbox_poll_interval,
                max_backoff=settings.relay_max_backoff_seconds,
                connect_timeout=settings.rabbitmq_connect_timeout,
                publish_timeout=settings.rabbitmq_publish_timeout,
                retention_seconds=settings.outbox_retention_hours * 3600,
            )
        app.state.sessionmaker = sessionmaker
        app.state.read_sessionmaker = make_read_sessionmaker(engine)
        app.state.cache = DeviceCache(
            redis,
            namespace=settings.redis_namespace,
            ttl=settings.cache_ttl_seconds,
            negative_ttl=settings.negative_cache_ttl_seconds,
        )
        app.state.relay = relay
        await jwt_verifier.start()
        app.state.verifier = jwt_verifier
        if relay is not None:
            await relay.start()
        try:
            yield
        finally:
            if relay is not None:
                await relay.close()
            await jwt_verifier.close()
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="device-management",
        version="0.1.0",
        description="Devices, device credentials, status and device events.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.verifier = None
    app.state.relay = None
    install_common(app, service=SERVICE, max_body_bytes=settings.max_body_bytes)
    app.include_router(health.router)
    app.include_router(devices.router)
    app.include_router(internal.router)
    return app
