"""Database engine and session factory (SQLAlchemy 2, asyncpg)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from device_management.config import DeviceManagementSettings


def async_url(url: str) -> str:
    """``postgresql://…`` (the platform's URL form) → the asyncpg dialect URL SQLAlchemy wants."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url[len(scheme) :]
    return url


def _dumps(value: Any) -> str:
    # NaN/Infinity are not JSON and PostgreSQL refuses them; schemas reject them before this.
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def make_engine(settings: DeviceManagementSettings) -> AsyncEngine:
    return create_async_engine(
        async_url(settings.database_url.get_secret_value()),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=1800,
        json_serializer=_dumps,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for single-statement reads: autocommit, so no BEGIN/ROLLBACK round trips.

    Shares ``engine``'s pool; the hot reads (``GET /devices/{id}``, the internal lookup) are one
    query each, so a transaction around them buys nothing.
    """
    return async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )
