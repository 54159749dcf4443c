"""latest without seq: drop ``monitoring_latest.seq``

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

0003 (released) made ``seq bigint NOT NULL``, always -1: a window does not carry its last
reading's sequence number, so the column never held anything and the window writes no longer
fill it. ``IF EXISTS``: a store made this morning by an unreleased main, whose 0003 had no
``seq``, is at 0003 too.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE monitoring_latest DROP COLUMN IF EXISTS seq")


def downgrade() -> None:
    # As 0003 made it; every row's seq was -1.
    op.execute("ALTER TABLE monitoring_latest ADD COLUMN seq bigint NOT NULL DEFAULT -1")
    op.execute("ALTER TABLE monitoring_latest ALTER COLUMN seq DROP DEFAULT")
