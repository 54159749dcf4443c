"""The newest value of each device × metric on PostgreSQL (``monitoring_latest``).

Written by the window upserts (``windows.py``), read here: the fleet table's last values and
its order by one metric's last value.
"""

from __future__ import annotations

from collections.abc import Sequence

from monitoring_store.base import Sample
from monitoring_store.postgres.connection import PgConnection

# One primary-key probe per device, then a sort of as many rows as devices named: nothing read
# is proportional to what the devices ever sent. ``n`` (the order given) breaks ties, so the
# order is total and an offset pages through it exactly.
_RANK = """
SELECT d.id
FROM unnest($1::text[]) WITH ORDINALITY AS d(id, n)
    LEFT JOIN monitoring_latest AS l ON l.device_id = d.id AND l.metric = $2
ORDER BY l.value IS NULL, CASE WHEN $3 THEN -l.value ELSE l.value END, d.n
LIMIT $4 OFFSET $5
"""


class PgLatest(PgConnection):
    """Latest values: ``monitoring_latest``."""

    async def latest_values(self, *, device_ids: Sequence[str]) -> list[Sample]:
        if not device_ids:
            return []
        rows = await self.pool.fetch(
            "SELECT device_id, metric, ts, value FROM monitoring_latest "
            "WHERE device_id = ANY($1::text[]) ORDER BY device_id, metric",
            sorted(set(device_ids)),
        )
        # No seq: a window does not carry its last reading's.
        return [Sample(*r) for r in rows]

    async def rank_by_latest(
        self,
        *,
        metric: str,
        device_ids: Sequence[str],
        descending: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[str]:
        if not device_ids or limit <= 0:
            return []
        rows = await self.pool.fetch(
            _RANK, list(dict.fromkeys(device_ids)), metric, descending, limit, offset
        )
        return [r["id"] for r in rows]
