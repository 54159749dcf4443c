"""baseline: the layout every store had before the schema was versioned

Revision ID: 0001
Revises:
Create Date: 2026-12-01

Creates a new store, and adopts one created by ``start()`` of any earlier version (converting
the first layouts on the way; see ``monitoring_store.postgres.schema.create_baseline``).
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy.util import await_only

from monitoring_store.postgres.schema import create_baseline

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The DDL is asyncpg's (several statements, the store's own functions): run it on the
    # driver connection of the migration's transaction, from inside SQLAlchemy's greenlet.
    await_only(create_baseline(op.get_bind().connection.driver_connection))


def downgrade() -> None:
    raise NotImplementedError("the baseline is not reversible: restore a backup instead")
