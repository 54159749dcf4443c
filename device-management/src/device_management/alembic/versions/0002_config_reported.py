"""The configuration version each device reported it applied.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("t_devices", sa.Column("config_reported_version", sa.Integer(), nullable=True))
    op.add_column(
        "t_devices", sa.Column("config_reported_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("t_devices", "config_reported_at")
    op.drop_column("t_devices", "config_reported_version")
