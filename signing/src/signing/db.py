"""Database engine and session factory from the settings' URL."""

from __future__ import annotations

from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession


def async_url(url: str) -> str:
    """``postgresql://…`` (the platform's form) → the asyncpg driver URL SQLAlchemy needs."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def safe_url(url: str | SecretStr) -> str:
    """The URL with any password masked, for messages."""
    if isinstance(url, SecretStr):
        url = url.get_secret_value()
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(async_url(url), pool_size=pool_size, pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
