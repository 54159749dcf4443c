"""The device-management app factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from device_management.api.routes import devices, health, internal
from device_management.broker_accounts import AMQP, MQTT, BrokerAccounts, SecretEncoder, TokenSeal
from device_management.cache import DeviceCache
from device_management.config import DeviceManagementSettings, get_settings
from device_management.db import make_engine, make_read_sessionmaker, make_sessionmaker
from device_management.outbox import OutboxRelay
from device_management.provisioner import Applier, DynsecControl, MqttApplier, Provisioner
from device_management.rabbitmq_accounts import AmqpApplier, encode_secret
from iot_common.auth import JWTVerifier
from iot_common.rabbitmq import Management
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
        accounts, provisioners = _provisioning(settings, sessionmaker)
        app.state.accounts = accounts
        app.state.provisioners = provisioners
        await jwt_verifier.start()
        app.state.verifier = jwt_verifier
        if relay is not None:
            await relay.start()
        for provisioner in provisioners:
            await provisioner.start()
        try:
            yield
        finally:
            for provisioner in provisioners:
                await provisioner.close()
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
    app.state.accounts = BrokerAccounts({})
    app.state.provisioners = []
    install_common(app, service=SERVICE, max_body_bytes=settings.max_body_bytes)
    app.include_router(health.router)
    app.include_router(devices.router)
    app.include_router(internal.router)
    return app


def _provisioning(
    settings: DeviceManagementSettings, sessionmaker: async_sessionmaker[AsyncSession]
) -> tuple[BrokerAccounts, list[Provisioner]]:
    """The brokers whose device accounts this service keeps, and a provisioner for each."""
    encoders: dict[str, SecretEncoder] = {}
    provisioners: list[Provisioner] = []

    def provisioner(target: str, applier: Applier) -> Provisioner:
        return Provisioner(
            target=target,
            applier=applier,
            sessionmaker=sessionmaker,
            batch_size=settings.broker_changes_batch_size,
            poll_interval=settings.outbox_poll_interval,
            max_backoff=settings.relay_max_backoff_seconds,
        )

    if settings.mqtt_provisioning:
        password = settings.mqtt_admin_password.get_secret_value()
        seal = TokenSeal(password)
        encoders[MQTT] = seal.seal
        control = DynsecControl(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            username=settings.mqtt_admin_username,
            password=password,
            timeout=settings.mqtt_control_timeout,
            ssl_context=settings.mqtt_ssl_context(),
        )
        provisioners.append(
            provisioner(MQTT, MqttApplier(control, seal, topic_prefix=settings.mqtt_topic_prefix))
        )
    if settings.amqp_provisioning:
        encoders[AMQP] = encode_secret
        admin_password = settings.rabbitmq_admin_password.get_secret_value()

        def management() -> Management:
            return Management(
                settings.rabbitmq_management_url,
                username=settings.rabbitmq_admin_username,
                password=admin_password,
                timeout=settings.rabbitmq_management_timeout,
            )

        applier = AmqpApplier(
            management,
            vhost=settings.rabbitmq_vhost,
            telemetry_exchange=settings.telemetry_exchange,
        )
        provisioners.append(provisioner(AMQP, applier))
    accounts = BrokerAccounts(encoders, sessionmaker=sessionmaker)
    accounts.attach(provisioners)
    return accounts, provisioners
