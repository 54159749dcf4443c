"""users and revoked tokens

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "t_users",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("role", sa.String(16), nullable=False, server_default="viewer"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("role IN ('admin', 'operator', 'viewer')", name="ck_t_users_role"),
        sa.UniqueConstraint("email", name="uq_t_users_email"),
    )
    op.create_table(
        "t_blacklist_tokens",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("jti", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column(
            "blacklisted_on",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("jti", name="uq_t_blacklist_tokens_jti"),
    )
    op.create_index("ix_t_blacklist_tokens_expires_at", "t_blacklist_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_t_blacklist_tokens_expires_at", table_name="t_blacklist_tokens")
    op.drop_table("t_blacklist_tokens")
    op.drop_table("t_users")
