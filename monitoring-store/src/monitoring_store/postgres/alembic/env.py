"""Alembic environment of the monitoring store: runs on the connection the caller hands in
(``monitoring_store.postgres.migrations.migrate``), inside its transaction and advisory lock."""

from __future__ import annotations

from alembic import context

from monitoring_store.postgres.migrations import VERSION_TABLE

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the store's migrations with `monitoring-store migrate`")
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    version_table_schema=config.attributes.get("schema"),
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
