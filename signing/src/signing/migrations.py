"""Alembic upgrades driven from code (``signing migrate``, the stack runner, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from signing.bootstrap import ensure_bootstrap_admin
from signing.config import SigningSettings
from signing.db import make_engine, make_sessionmaker, safe_url
from signing.keys import Rotation, ensure_key, rotate
from signing.security import Passwords

ALEMBIC_DIR = Path(__file__).with_name("alembic")


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade_head(database_url: str) -> None:
    """Bring the database at ``database_url`` to the newest schema (blocking; no event loop)."""
    command.upgrade(alembic_config(database_url), "head")


async def check_database(settings: SigningSettings, *, migrated: bool = True) -> None:
    """Fail with one clear message unless the database is reachable (and migrated)."""
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
    try:
        async with engine.connect() as conn:
            found = await conn.scalar(text("SELECT to_regclass('t_users') IS NOT NULL"))
    except (DBAPIError, OSError) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
        reason = (str(cause).splitlines() or [""])[0] or cause.__class__.__name__
        raise RuntimeError(
            f"cannot use PostgreSQL at {safe_url(settings.database_url)}: {reason}"
        ) from exc
    finally:
        await engine.dispose()
    if migrated and not found:
        raise RuntimeError("signing's tables are missing: run `signing migrate` first")


async def bootstrap_admin(settings: SigningSettings) -> None:
    """The bootstrap admin and a first signing key, before any replica starts."""
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
    try:
        sessions = make_sessionmaker(engine)
        await ensure_bootstrap_admin(settings, sessions, Passwords(settings))
        await ensure_key(sessions, settings)
    finally:
        await engine.dispose()


async def rotate_key(settings: SigningSettings, *, revoke_previous: bool = False) -> Rotation:
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
    try:
        return await rotate(make_sessionmaker(engine), settings, revoke_previous=revoke_previous)
    finally:
        await engine.dispose()
