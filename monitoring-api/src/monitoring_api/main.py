"""The monitoring API application: HTTP routes, Socket.IO, Kafka consumer, webhook worker."""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from redis.asyncio import Redis

from iot_common.auth import JWTVerifier
from iot_common.web import BodyLimit, install_common
from monitoring_api.api.routes import (
    alerts,
    data,
    deadletters,
    fleet,
    session,
    stats,
    subscriptions,
)
from monitoring_api.config import MonitoringApiSettings, get_settings
from monitoring_api.devices import DeviceDirectory, HttpDeviceDirectory
from monitoring_api.egress import Egress, EgressPolicy, Resolver, SystemResolver
from monitoring_api.live import LiveConsumer, LiveHub, SocketIOMount, socketio_server
from monitoring_api.logs import redact_url_tokens
from monitoring_api.proxies import ForwardedFor, parse_trusted
from monitoring_api.publisher import AlertPublisher, KafkaAlertPublisher, NullAlertPublisher
from monitoring_api.webhooks import WebhookDispatcher, WebhookSender
from monitoring_store import open_store
from monitoring_store.base import MonitoringStore

log = logging.getLogger(__name__)


@dataclass
class Overrides:
    """Collaborators a test (or an embedding program) hands in instead of the defaults."""

    store: MonitoringStore | None = None
    devices: DeviceDirectory | None = None
    verifier: JWTVerifier | None = None
    publisher: AlertPublisher | None = None
    signing_http: httpx.AsyncClient | None = None
    webhook_resolver: Resolver | None = None
    webhook_ssl_context: ssl.SSLContext | None = None


def create_app(
    settings: MonitoringApiSettings | None = None,
    *,
    store: MonitoringStore | None = None,
    devices: DeviceDirectory | None = None,
    verifier: JWTVerifier | None = None,
    publisher: AlertPublisher | None = None,
    signing_http: httpx.AsyncClient | None = None,
    webhook_resolver: Resolver | None = None,
    webhook_ssl_context: ssl.SSLContext | None = None,
) -> FastAPI:
    """Build the app; collaborators not handed in are built from ``settings`` at startup."""
    settings = settings or get_settings()
    given = Overrides(
        store, devices, verifier, publisher, signing_http, webhook_resolver, webhook_ssl_context
    )
    egress = Egress(
        policy=EgressPolicy.from_setting(settings.webhook_allow_private_networks),
        resolver=webhook_resolver or SystemResolver(),
    )
    sio = socketio_server(cors_allowed_origins=settings.socketio_cors_origins or None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            st = given.store
            if st is None:
                st = open_store(settings.store_url.get_secret_value())
                await st.start()
                stack.push_async_callback(st.close)
            app.state.store = st

            ver = given.verifier
            if ver is None:
                redis = Redis.from_url(settings.redis_url)
                stack.push_async_callback(redis.aclose)
                ver = JWTVerifier(
                    jwks_url=settings.jwks_url,
                    redis=redis,
                    namespace=settings.redis_namespace,
                    issuer=settings.jwt_issuer,
                    audience=settings.jwt_audience,
                )
                await ver.start()
                stack.push_async_callback(ver.close)
            app.state.verifier = ver

            directory = given.devices
            if directory is None:
                directory = HttpDeviceDirectory(
                    settings.device_management_url,
                    internal_token=settings.internal_token.get_secret_value(),
                    cache_ttl=settings.device_cache_ttl,
                    timeout=settings.device_management_timeout,
                )
                stack.push_async_callback(directory.close)
            app.state.devices = directory

            shttp = given.signing_http
            if shttp is None:
                shttp = httpx.AsyncClient(base_url=settings.signing_url, timeout=10.0)
                stack.push_async_callback(shttp.aclose)
            app.state.signing_http = shttp

            pub = given.publisher
            if pub is None:
                pub = (
                    KafkaAlertPublisher(
                        bootstrap=settings.kafka_bootstrap, topic=settings.topics.alerts
                    )
                    if settings.kafka_enabled
                    else NullAlertPublisher()
                )
                await pub.start()
                stack.push_async_callback(pub.close)
            app.state.publisher = pub

            hub = LiveHub(
                sio=sio,
                verifier=ver,
                directory=directory,
                store=st,
                fleet_interval=settings.fleet_push_interval,
                sweep_interval=settings.session_sweep_interval,
            )
            app.state.hub = hub
            hub.start()
            stack.push_async_callback(hub.close)

            webhooks = WebhookDispatcher(
                store=st,
                sender=WebhookSender(
                    policy=egress.policy,
                    resolver=egress.resolver,
                    deadline=settings.webhook_timeout,
                    max_response_bytes=settings.webhook_max_response_bytes,
                    max_connections=settings.webhook_concurrency,
                    ssl_context=given.webhook_ssl_context,
                ),
                max_attempts=settings.webhook_max_attempts,
                backoff_base=settings.webhook_backoff_base,
                backoff_max=settings.webhook_backoff_max,
                poll_interval=settings.webhook_poll_interval,
                concurrency=settings.webhook_concurrency,
                per_owner=settings.webhook_per_owner,
            )
            app.state.webhooks = webhooks
            if settings.webhook_enabled:
                webhooks.start()
            stack.push_async_callback(webhooks.close)

            consumer = None
            if settings.kafka_enabled:
                consumer = LiveConsumer(
                    bootstrap=settings.kafka_bootstrap,
                    topics=settings.topics,
                    group_id=(
                        f"{settings.topic_prefix}{settings.consumer_group_prefix}."
                        f"{settings.instance_id}"
                    ),
                    hub=hub,
                    on_alerts=webhooks.enqueue,
                )
                await consumer.start()
                stack.push_async_callback(consumer.close)
            app.state.consumer = consumer
            log.info(
                "monitoring-api ready (instance %s, store %s)",
                settings.instance_id,
                re.sub(r"//[^@/]*@", "//***@", settings.store_url.get_secret_value()),
            )
            # What start-up built lives as long as the process: keep it out of the collector's
            # full passes, which would otherwise walk it while a large answer is being built.
            gc.freeze()
            yield

    app = FastAPI(
        title="IoT monitoring API",
        version="0.1.0",
        summary="Rolling-stats queries, live pushes (Socket.IO at /ws/monitoring), alert webhooks.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.egress = egress
    install_common(
        app,
        service="monitoring-api",
        max_body_bytes=settings.max_body_bytes,
        body_limits=[
            BodyLimit("PUT", session.CONFIG_RELAY_PATH, session.CONFIG_RELAY_MAX_BYTES),
        ],
    )
    for module in (data, stats, fleet, alerts, deadletters, subscriptions, session):
        app.include_router(module.router)

    @app.get("/health", tags=["health"])
    async def health(request: Request) -> JSONResponse:
        """200 when the store answers and the live consumer is running, 503 otherwise."""
        checks: dict[str, str] = {}
        try:
            await request.app.state.store.query_alerts(limit=1)
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"error: {type(exc).__name__}"
        consumer = request.app.state.consumer
        if consumer is not None:
            checks["kafka"] = "ok" if consumer.ready.is_set() else "starting"
        ok = checks["store"] == "ok"
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "service": "monitoring-api", **checks},
            status_code=200 if ok else 503,
        )

    _mount_dashboard(app, settings)
    app.add_middleware(SocketIOMount, sio=sio)
    # Outermost, so Socket.IO, the routes and uvicorn's access line all see the client.
    app.add_middleware(ForwardedFor, trusted=parse_trusted(settings.trusted_proxies))
    redact_url_tokens()
    return app


def _mount_dashboard(app: FastAPI, settings: MonitoringApiSettings) -> None:
    root = settings.dashboard_dir
    index = root / "index.html"

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> Response:
        if not index.is_file():
            return JSONResponse(
                {
                    "error": {
                        "code": "unavailable",
                        "message": "dashboard not built: run scripts/test.d/20-dashboard.sh",
                    }
                },
                status_code=503,
            )
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    assets = root / "assets"
    app.mount(
        "/dashboard/assets", StaticFiles(directory=assets, check_dir=False), name="dashboard-assets"
    )


__all__: list[Any] = ["create_app"]
