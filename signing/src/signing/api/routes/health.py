"""Health: 200 when PostgreSQL and Redis answer, 503 otherwise."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from signing.api.deps import StateDep
from signing.schemas import Health

log = logging.getLogger(__name__)

router = APIRouter()


@router.get(
    "/health",
    tags=["health"],
    response_model=Health,
    responses={503: {"model": Health}},
    summary="200 when PostgreSQL and Redis are reachable, 503 otherwise",
)
async def health(state: StateDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2), state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["postgres"] = "ok"
    except Exception as exc:
        log.warning("health: postgres unreachable: %s", exc)
        checks["postgres"] = "unreachable"
    try:
        async with asyncio.timeout(2):
            await state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        log.warning("health: redis unreachable: %s", exc)
        checks["redis"] = "unreachable"
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
