"""App factory: the bridge's HTTP app, whose lifespan runs the whole bridge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ingest_bridge.bridge import Bridge
from ingest_bridge.config import IngestBridgeSettings, get_settings
from ingest_bridge.sources import http
from iot_common.web import install_common


def create_app(
    settings: IngestBridgeSettings | None = None, *, bridge: Bridge | None = None
) -> FastAPI:
    """The HTTP app on port 8004 (ingest, /health, /ready, /metrics) running the bridge."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        b = bridge or Bridge(settings)
        app.state.bridge = b
        await b.start()
        try:
            yield
        finally:
            await b.close()

    app = FastAPI(title="ingest-bridge", lifespan=lifespan)
    install_common(app, service="ingest-bridge", max_body_bytes=settings.http_max_body_bytes)
    app.include_router(http.router)
    if not settings.http_enabled:
        app.router.routes = [
            r for r in app.router.routes if getattr(r, "path", "") != "/ingest/{device_id}"
        ]
    return app
