"""Alembic upgrades driven from code (``signing migrate``, the stack runner, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from signing.bootstrap import ensure_bootstrap_admin
from signing.config import SigningSettings
from signing.db import make_engine, make_sessionmaker
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


async def bootstrap_admin(settings: SigningSettings) -> None:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        await ensure_bootstrap_admin(settings, make_sessionmaker(engine), Passwords(settings))
    finally:
        await engine.dispose()
