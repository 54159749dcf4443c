"""Refused messages per device on PostgreSQL (``monitoring_deadletters``)."""

# SQL text here is assembled only from module constants; every value goes as a $n parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from monitoring_store.base import DeadLetterRecord
from monitoring_store.postgres.connection import PgConnection, _chunks

_COLS = "id, device_id, ts, reason, source, detail, payload, payload_truncated"

_INSERT = f"""
INSERT INTO monitoring_deadletters ({_COLS})
SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::boolean[])
ON CONFLICT (id) DO NOTHING
"""


def _from(row: asyncpg.Record) -> DeadLetterRecord:
    return DeadLetterRecord(**dict(row.items()))


class PgDeadLetters(PgConnection):
    """Refused messages: newest first per device (index ``(device_id, ts DESC)``)."""

    async def insert_deadletters(self, records: Sequence[DeadLetterRecord]) -> None:
        rows = list(records)
        for part in _chunks(len(rows)):
            chunk = rows[part]
            await self.pool.execute(
                _INSERT,
                [r.id for r in chunk],
                [r.device_id for r in chunk],
                [r.ts for r in chunk],
                [r.reason for r in chunk],
                [r.source for r in chunk],
                [r.detail for r in chunk],
                [r.payload for r in chunk],
                [r.payload_truncated for r in chunk],
            )

    async def query_deadletters(
        self,
        *,
        device_ids: Sequence[str] | None,
        reason: str | None = None,
        before: float | None = None,
        after: tuple[float, str] | None = None,
        limit: int = 100,
    ) -> list[DeadLetterRecord]:
        if device_ids is not None and not device_ids:
            return []
        where, args = _filters(device_ids, reason=reason, end=before)
        if after is not None:
            args.extend(after)
            key = f"(ts, id) < (${len(args) - 1}::float8, ${len(args)}::text)"
            where = f"{where} AND {key}" if where else f"WHERE {key}"
        args.append(limit)
        rows = await self.pool.fetch(
            f"SELECT {_COLS} FROM monitoring_deadletters {where} "
            f"ORDER BY ts DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
        return [_from(r) for r in rows]

    async def deadletter_counts(
        self, *, device_ids: Sequence[str] | None, start: float, end: float
    ) -> dict[str, int]:
        if device_ids is not None and not device_ids:
            return {}
        where, args = _filters(device_ids, start=start, end=end)
        rows = await self.pool.fetch(
            f"SELECT reason, count(*) AS n FROM monitoring_deadletters {where} "
            "GROUP BY reason ORDER BY reason",
            *args,
        )
        return {r["reason"]: r["n"] for r in rows}

    async def delete_deadletters_before(self, ts: float) -> int:
        status = await self.pool.execute("DELETE FROM monitoring_deadletters WHERE ts < $1", ts)
        return int(status.split()[-1])


def _filters(
    device_ids: Sequence[str] | None,
    *,
    reason: str | None = None,
    start: float | None = None,
    end: float | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if device_ids is not None:
        args.append(list(device_ids))
        clauses.append(f"device_id = ANY(${len(args)}::text[])")
    if reason is not None:
        args.append(reason)
        clauses.append(f"reason = ${len(args)}")
    if start is not None:
        args.append(start)
        clauses.append(f"ts >= ${len(args)}")
    if end is not None:
        args.append(end)
        clauses.append(f"ts < ${len(args)}")
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args
