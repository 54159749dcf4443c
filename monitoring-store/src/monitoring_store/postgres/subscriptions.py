"""Alert subscriptions and their webhook deliveries on PostgreSQL."""

# SQL text here is assembled only from module constants; every value goes as a $n parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from monitoring_store.base import (
    Delivery,
    Subscription,
)
from monitoring_store.postgres.connection import PgConnection

_DELIVERY_COLS = (
    "id, subscription_id, payload, status, attempts, next_attempt_at, last_error, "
    "created_at, updated_at"
)


def _delivery_from(row: asyncpg.Record) -> Delivery:
    return Delivery(
        id=row["id"],
        subscription_id=row["subscription_id"],
        payload=row["payload"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _subscription_from(row: asyncpg.Record) -> Subscription:
    return Subscription(
        id=row["id"],
        owner_id=row["owner_id"],
        url=row["url"],
        secret=row["secret"],
        device_ids=list(row["device_ids"]) if row["device_ids"] is not None else None,
        min_severity=row["min_severity"],
        rule_types=list(row["rule_types"]) if row["rule_types"] is not None else None,
        created_at=row["created_at"],
    )


class PgSubscriptions(PgConnection):
    """Subscriptions and deliveries: ``monitoring_subscriptions``, ``monitoring_deliveries``."""

    async def create_subscription(self, sub: Subscription) -> None:
        await self.pool.execute(
            "INSERT INTO monitoring_subscriptions "
            "(id, owner_id, url, secret, device_ids, min_severity, rule_types, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            sub.id,
            sub.owner_id,
            sub.url,
            sub.secret,
            sub.device_ids,
            sub.min_severity,
            sub.rule_types,
            sub.created_at,
        )

    async def list_subscriptions(self, *, owner_id: str | None) -> list[Subscription]:
        rows = await self.pool.fetch(
            "SELECT * FROM monitoring_subscriptions WHERE ($1::text IS NULL OR owner_id = $1) "
            "ORDER BY created_at, id",
            owner_id,
        )
        return [_subscription_from(r) for r in rows]

    async def get_subscription(self, sub_id: str) -> Subscription | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM monitoring_subscriptions WHERE id = $1", sub_id
        )
        return _subscription_from(row) if row is not None else None

    async def delete_subscription(self, sub_id: str, *, owner_id: str | None) -> bool:
        status = await self.pool.execute(
            "DELETE FROM monitoring_subscriptions WHERE id = $1 "
            "AND ($2::text IS NULL OR owner_id = $2)",
            sub_id,
            owner_id,
        )
        return status != "DELETE 0"

    async def enqueue_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        # A delivery for a subscription deleted meanwhile is dropped rather than failing
        # the whole batch on the foreign key.
        await self.pool.execute(
            f"INSERT INTO monitoring_deliveries ({_DELIVERY_COLS}) "
            "SELECT u.* FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], "
            "$5::integer[], $6::float8[], $7::text[], $8::float8[], $9::float8[]) "
            "AS u(id, subscription_id, payload, status, attempts, next_attempt_at, last_error, "
            "created_at, updated_at) "
            "WHERE EXISTS (SELECT 1 FROM monitoring_subscriptions s "
            "              WHERE s.id = u.subscription_id) "
            "ON CONFLICT (id) DO NOTHING",
            [d.id for d in deliveries],
            [d.subscription_id for d in deliveries],
            [d.payload for d in deliveries],
            [d.status for d in deliveries],
            [d.attempts for d in deliveries],
            [d.next_attempt_at for d in deliveries],
            [d.last_error for d in deliveries],
            [d.created_at for d in deliveries],
            [d.updated_at for d in deliveries],
        )

    async def due_deliveries(
        self,
        *,
        now: float,
        limit: int,
        lease_seconds: float = 0.0,
        exclude_subscriptions: Sequence[str] = (),
    ) -> list[Delivery]:
        """Pending deliveries whose ``next_attempt_at`` has come, oldest first.

        With ``lease_seconds`` > 0 the returned deliveries are claimed: their
        ``next_attempt_at`` moves to ``now + lease_seconds`` in the same statement (rows
        another instance is claiming are skipped), so several API instances never send the
        same delivery at once; the caller then records the outcome with ``update_delivery``.
        Deliveries of ``exclude_subscriptions`` are not returned.
        """
        excluded = list(exclude_subscriptions)
        if lease_seconds > 0:
            rows = await self.pool.fetch(
                f"UPDATE monitoring_deliveries d SET next_attempt_at = $1 + $3 "
                f"FROM (SELECT id FROM monitoring_deliveries "
                f"      WHERE status = 'pending' AND next_attempt_at <= $1 "
                f"        AND subscription_id <> ALL($4::text[]) "
                f"      ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) due "
                f"WHERE d.id = due.id "
                f"RETURNING {', '.join('d.' + c.strip() for c in _DELIVERY_COLS.split(','))}",
                now,
                limit,
                lease_seconds,
                excluded,
            )
            return sorted((_delivery_from(r) for r in rows), key=lambda d: d.created_at)
        rows = await self.pool.fetch(
            f"SELECT {_DELIVERY_COLS} FROM monitoring_deliveries "
            "WHERE status = 'pending' AND next_attempt_at <= $1 "
            "AND subscription_id <> ALL($3::text[]) "
            "ORDER BY next_attempt_at, created_at LIMIT $2",
            now,
            limit,
            excluded,
        )
        return [_delivery_from(r) for r in rows]

    async def update_delivery(self, delivery: Delivery) -> None:
        await self.pool.execute(
            "UPDATE monitoring_deliveries SET status = $2, attempts = $3, next_attempt_at = $4, "
            "last_error = $5, updated_at = $6, payload = $7 WHERE id = $1",
            delivery.id,
            delivery.status,
            delivery.attempts,
            delivery.next_attempt_at,
            delivery.last_error,
            delivery.updated_at,
            delivery.payload,
        )

    async def list_deliveries(
        self, *, subscription_id: str, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        """A subscription's deliveries, newest first."""
        rows = await self.pool.fetch(
            f"SELECT {_DELIVERY_COLS} FROM monitoring_deliveries "
            "WHERE subscription_id = $1 AND ($2::text IS NULL OR status = $2) "
            "ORDER BY created_at DESC, id LIMIT $3",
            subscription_id,
            status,
            limit,
        )
        return [_delivery_from(r) for r in rows]
