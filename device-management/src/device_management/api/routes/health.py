"""Liveness/readiness: PostgreSQL and Redis must answer; RabbitMQ being away is reported only."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from device_management.api.deps import CacheDep, RelayDep, SessionDep
from device_management.schemas import Health

router = APIRouter(tags=["health"])


async def _check(coro: Any) -> bool:
    try:
        await asyncio.wait_for(coro, timeout=2.0)
    except Exception:
        return False
    return True


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(session: SessionDep, cache: CacheDep, relay: RelayDep) -> JSONResponse:
    """200 when PostgreSQL and Redis answer (events wait in the outbox while RabbitMQ is away)."""
    db_ok = await _check(session.execute(text("SELECT 1")))
    redis_ok = await _check(cache.redis.ping())
    pending = None
    if relay is None:
        rabbit = "disabled"
    else:
        rabbit = "up" if relay.connected else "down"
        if db_ok:
            try:
                pending = await asyncio.wait_for(relay.pending(), timeout=2.0)
            except Exception:
                pending = None
    ok = db_ok and redis_ok
    body = Health(
        status="ok" if ok else "unavailable",
        database="up" if db_ok else "down",
        redis="up" if redis_ok else "down",
        rabbitmq=rabbit,
        outbox_pending=pending,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
