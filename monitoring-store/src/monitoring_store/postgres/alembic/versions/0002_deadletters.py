"""deadletters: refused messages per device, for their owners

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

``monitoring_deadletters`` holds what the platform refused (reason, time, the payload's first
KiB), read newest first per device; the stream agents' retention timer bounds it in time.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE monitoring_deadletters (
            id text PRIMARY KEY,
            device_id text NOT NULL,
            ts double precision NOT NULL,
            reason text NOT NULL,
            source text NOT NULL,
            detail text,
            payload text NOT NULL,
            payload_truncated boolean NOT NULL
        )
        """
    )
    op.execute(
        "CREATE INDEX monitoring_deadletters_device ON monitoring_deadletters (device_id, ts DESC)"
    )
    # Retention deletes and fleet-wide counts by time.
    op.execute("CREATE INDEX monitoring_deadletters_ts ON monitoring_deadletters (ts)")


def downgrade() -> None:
    op.execute("DROP TABLE monitoring_deadletters")
