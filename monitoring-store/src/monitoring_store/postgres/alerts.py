"""Alerts on PostgreSQL: lifecycle-preserving upserts, queries, user transitions."""

# SQL text here is assembled only from module constants; every value goes as a $n parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from iot_common.events import STATUS_RANK, Alert, severities_at_least
from monitoring_store.base import (
    AlertTransitionError,
)
from monitoring_store.postgres.connection import PgConnection

_ALERT_COLS = (
    "alert_id",
    "device_id",
    "rule_id",
    "rule_type",
    "severity",
    "status",
    "message",
    "started_at",
    "updated_at",
    "metric",
    "value",
    "threshold",
    "acknowledged_at",
    "acknowledged_by",
    "cleared_at",
    "owner_id",
)


# The lifecycle order as SQL, from the one definition (iot_common.events.STATUS_RANK).
_STATUS_RANK_SQL = (
    "CASE {s} "
    + " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in STATUS_RANK.items())
    + " END"
)


# A status never moves backwards (an agent's late "active" update must not undo a user's
# acknowledgement); descriptive fields follow the newer update; who/when of ack and clear are
# kept once set.
_ALERT_UPSERT = f"""
INSERT INTO monitoring_alerts ({", ".join(_ALERT_COLS)})
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::float8[], $9::float8[], $10::text[], $11::float8[],
                     $12::float8[], $13::float8[], $14::text[], $15::float8[], $16::text[])
ON CONFLICT (alert_id) DO UPDATE SET
    status = CASE WHEN {_STATUS_RANK_SQL.format(s="EXCLUDED.status")}
                       >= {_STATUS_RANK_SQL.format(s="monitoring_alerts.status")}
                  THEN EXCLUDED.status ELSE monitoring_alerts.status END,
    severity = CASE WHEN EXCLUDED.updated_at >= monitoring_alerts.updated_at
                    THEN EXCLUDED.severity ELSE monitoring_alerts.severity END,
    message = CASE WHEN EXCLUDED.updated_at >= monitoring_alerts.updated_at
                   THEN EXCLUDED.message ELSE monitoring_alerts.message END,
    metric = COALESCE(EXCLUDED.metric, monitoring_alerts.metric),
    value = CASE WHEN EXCLUDED.updated_at >= monitoring_alerts.updated_at
                 THEN COALESCE(EXCLUDED.value, monitoring_alerts.value)
                 ELSE monitoring_alerts.value END,
    threshold = COALESCE(EXCLUDED.threshold, monitoring_alerts.threshold),
    acknowledged_at = COALESCE(monitoring_alerts.acknowledged_at, EXCLUDED.acknowledged_at),
    acknowledged_by = COALESCE(monitoring_alerts.acknowledged_by, EXCLUDED.acknowledged_by),
    cleared_at = COALESCE(monitoring_alerts.cleared_at, EXCLUDED.cleared_at),
    owner_id = COALESCE(EXCLUDED.owner_id, monitoring_alerts.owner_id),
    updated_at = GREATEST(EXCLUDED.updated_at, monitoring_alerts.updated_at)
"""


def _alert_from(row: asyncpg.Record) -> Alert:
    return Alert(**{c: row[c] for c in _ALERT_COLS})


class PgAlerts(PgConnection):
    """Alerts: ``monitoring_alerts``."""

    async def upsert_alerts(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        # Same alert twice in one statement is not allowed; order by updated_at and apply the
        # duplicates in later statements so the lifecycle rules still see every state.
        rounds: list[list[Alert]] = []
        seen: dict[str, int] = {}
        for a in sorted(alerts, key=lambda a: a.updated_at):
            idx = seen.get(a.alert_id, -1) + 1
            seen[a.alert_id] = idx
            if idx == len(rounds):
                rounds.append([])
            rounds[idx].append(a)
        async with self.pool.acquire() as conn, conn.transaction():
            for group in rounds:
                await conn.execute(
                    _ALERT_UPSERT, *[[getattr(a, c) for a in group] for c in _ALERT_COLS]
                )

    async def query_alerts(
        self,
        *,
        device_ids: Sequence[str] | None = None,
        status: str | None = None,
        min_severity: str | None = None,
        start: float | None = None,
        end: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Alert]:
        """Alerts newest first; ``start``/``end`` bound ``started_at`` (end exclusive)."""
        if device_ids is not None and not device_ids:
            return []
        severities = severities_at_least(min_severity) if min_severity is not None else None
        rows = await self.pool.fetch(
            f"SELECT {', '.join(_ALERT_COLS)} FROM monitoring_alerts "
            "WHERE ($1::text[] IS NULL OR device_id = ANY($1::text[])) "
            "AND ($2::text IS NULL OR status = $2) "
            "AND ($3::text[] IS NULL OR severity = ANY($3::text[])) "
            "AND ($4::float8 IS NULL OR started_at >= $4) "
            "AND ($5::float8 IS NULL OR started_at < $5) "
            "ORDER BY started_at DESC, alert_id LIMIT $6 OFFSET $7",
            list(device_ids) if device_ids is not None else None,
            status,
            severities,
            start,
            end,
            limit,
            offset,
        )
        return [_alert_from(r) for r in rows]

    async def get_alert(self, alert_id: str) -> Alert | None:
        row = await self.pool.fetchrow(
            f"SELECT {', '.join(_ALERT_COLS)} FROM monitoring_alerts WHERE alert_id = $1",
            alert_id,
        )
        return _alert_from(row) if row is not None else None

    async def transition_alert(
        self, alert_id: str, *, status: str, by: str | None, at: float
    ) -> Alert | None:
        """Move an alert forward (active → acknowledged → cleared, or active → cleared).

        Asking for the status it already has returns it unchanged (idempotent); asking to
        move backwards raises :class:`AlertTransitionError`. None if the alert is unknown.
        """
        if status not in ("acknowledged", "cleared"):
            raise ValueError(f"cannot transition an alert to {status!r}")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {', '.join(_ALERT_COLS)} FROM monitoring_alerts "
                "WHERE alert_id = $1 FOR UPDATE",
                alert_id,
            )
            if row is None:
                return None
            current = _alert_from(row)
            if current.status == status:
                return current
            if STATUS_RANK[status] < STATUS_RANK.get(current.status, 0):
                raise AlertTransitionError(current, status)
            if status == "acknowledged":
                new = await conn.fetchrow(
                    "UPDATE monitoring_alerts SET status = 'acknowledged', acknowledged_at = $2, "
                    "acknowledged_by = $3, updated_at = greatest(updated_at, $2) "
                    f"WHERE alert_id = $1 RETURNING {', '.join(_ALERT_COLS)}",
                    alert_id,
                    at,
                    by,
                )
            else:
                new = await conn.fetchrow(
                    "UPDATE monitoring_alerts SET status = 'cleared', cleared_at = $2, "
                    "updated_at = greatest(updated_at, $2) "
                    f"WHERE alert_id = $1 RETURNING {', '.join(_ALERT_COLS)}",
                    alert_id,
                    at,
                )
            assert new is not None
            return _alert_from(new)
