"""latest: the newest value of each metric of each device, for the fleet table's sort

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

``monitoring_latest`` holds one row per device × metric (the newest reading the stored windows
saw: their ``last`` at ``last_ts``), kept by every window write, so "devices by the last value
of a metric" is one primary-key probe per device instead of a walk back through each device's
windows (which, for a device that never sent the metric, reads all of them). Filled from the
stored windows here. ``seq`` is -1: a window does not carry its last reading's sequence.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE monitoring_latest (
            device_id text NOT NULL,
            metric text NOT NULL,
            ts double precision NOT NULL,
            seq bigint NOT NULL,
            value double precision NOT NULL,
            CONSTRAINT monitoring_latest_pkey PRIMARY KEY (device_id, metric)
        ) WITH (fillfactor = 50)
        """
    )
    op.execute(
        """
        INSERT INTO monitoring_latest (device_id, metric, ts, seq, value)
        SELECT DISTINCT ON (device_id, metric) device_id, metric, last_ts, -1, last
        FROM monitoring_windows WHERE count > 0
        ORDER BY device_id, metric, last_ts DESC
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE monitoring_latest")
