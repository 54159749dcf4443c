"""Versioned schema of the PostgreSQL store: Alembic, driven from code.

``monitoring-store migrate`` (the one-shot job of compose and Kubernetes, and ``iotctl up``),
and ``PostgresStore.start()`` when the schema is behind, both end here. The revisions live in
``alembic/versions``; the version table is ``alembic_version_monitoring_store``, so the store can
share a database with the services' own Alembic histories. Upgrades hold a transaction-level
advisory lock, so several processes upgrading at once run the migrations once.
"""

from __future__ import annotations

import functools
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

ALEMBIC_DIR = Path(__file__).with_name("alembic")
VERSION_TABLE = "alembic_version_monitoring_store"


class StoreNotMigrated(RuntimeError):
    """The store's schema is not at the newest migration and may not be upgraded here."""


def _config(connection: Connection | None = None, schema: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.attributes["connection"] = connection
    cfg.attributes["schema"] = schema
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


async def schema_revision(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
) -> str | None:
    """The revision the store on ``conn``'s search path is at (None: not versioned yet)."""
    # The table name is this module's constant.
    if not await conn.fetchval(f"SELECT to_regclass('{VERSION_TABLE}') IS NOT NULL"):
        return None
    revision: str | None = await conn.fetchval(f"SELECT version_num FROM {VERSION_TABLE}")  # noqa: S608
    return revision


def _sqlalchemy_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return (
        f"postgresql+asyncpg{sep}{rest}"
        if scheme.split("+", 1)[0] in ("postgresql", "postgres")
        else url
    )


async def migrate(url: str, *, schema: str | None = None, revision: str = "head") -> str:
    """Bring the store at ``url`` (in ``schema``, if given) to the newest revision (or to
    ``revision``, e.g. to build an older store in a test); returns the revision it is at."""
    engine = create_async_engine(
        _sqlalchemy_url(url),
        poolclass=NullPool,
        connect_args={"server_settings": {"search_path": schema}} if schema else {},
    )
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(hashtext('monitoring_store_schema'))"
            )
            if schema:
                await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.run_sync(lambda sync: command.upgrade(_config(sync, schema), revision))
    finally:
        await engine.dispose()
    return head_revision() if revision == "head" else revision
