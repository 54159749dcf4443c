"""The PostgreSQL store: one class over the resource modules."""

# SQL text here is assembled only from module constants; every value goes as a $n parameter.

from __future__ import annotations

import logging

import asyncpg

from monitoring_store.postgres.alerts import PgAlerts
from monitoring_store.postgres.deadletters import PgDeadLetters
from monitoring_store.postgres.latest import PgLatest
from monitoring_store.postgres.migrations import (
    StoreNotMigrated,
    head_revision,
    migrate,
    schema_revision,
)
from monitoring_store.postgres.rules import PgDeviceRules
from monitoring_store.postgres.samples import PgSamples
from monitoring_store.postgres.subscriptions import PgSubscriptions
from monitoring_store.postgres.windows import PgWindows

log = logging.getLogger(__name__)


class PostgresStore(
    PgWindows, PgSamples, PgLatest, PgAlerts, PgDeviceRules, PgSubscriptions, PgDeadLetters
):
    """The monitoring store on PostgreSQL (see the package docstring for the layout)."""

    async def start(self) -> None:
        """Open the pool; bring the schema to the newest migration first when it is behind
        (``migrate=False``: refuse instead, for deployments whose one-shot
        ``monitoring-store migrate`` job owns upgrades)."""
        if self._pool is not None:
            return
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=self._min_pool,
            max_size=self._max_pool,
            init=self._init_connection,
            server_settings={"search_path": self._schema} if self._schema else None,
        )
        async with self._pool.acquire() as conn:
            revision = await schema_revision(conn)
        if revision != head_revision():
            if not self._migrate:
                await self.close()
                raise StoreNotMigrated(
                    f"the monitoring store's schema is at {revision or 'no version'}, this code "
                    f"needs {head_revision()}: run `monitoring-store migrate` first"
                )
            await migrate(self._url, schema=self._schema)

    async def schema_version(self) -> str:
        async with self.pool.acquire() as conn:
            return await schema_revision(conn) or "none"
