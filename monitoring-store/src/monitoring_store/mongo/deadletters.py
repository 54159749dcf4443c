"""Refused messages per device on MongoDB (``deadletters``, ``_id`` = where it was read)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import DESCENDING
from pymongo.errors import BulkWriteError

from monitoring_store.base import DeadLetterRecord
from monitoring_store.mongo.connection import (
    DEADLETTERS,
    WRITE_CHUNK,
    Doc,
    MongoConnection,
    _only_duplicate_keys,
)


def _doc(r: DeadLetterRecord) -> Doc:
    return {
        "_id": r.id,
        "device_id": r.device_id,
        "ts": r.ts,
        "reason": r.reason,
        "source": r.source,
        "detail": r.detail,
        "payload": r.payload,
        "payload_truncated": r.payload_truncated,
    }


def _from(d: Doc) -> DeadLetterRecord:
    return DeadLetterRecord(
        id=d["_id"],
        device_id=d["device_id"],
        ts=d["ts"],
        reason=d["reason"],
        source=d["source"],
        detail=d.get("detail"),
        payload=d["payload"],
        payload_truncated=bool(d.get("payload_truncated")),
    )


def _filter(
    device_ids: Sequence[str] | None,
    *,
    reason: str | None = None,
    start: float | None = None,
    end: float | None = None,
) -> Doc:
    f: Doc = {}
    if device_ids is not None:
        f["device_id"] = {"$in": list(device_ids)}
    if reason is not None:
        f["reason"] = reason
    ts: dict[str, Any] = {}
    if start is not None:
        ts["$gte"] = start
    if end is not None:
        ts["$lt"] = end
    if ts:
        f["ts"] = ts
    return f


class MongoDeadLetters(MongoConnection):
    """Refused messages: newest first per device (index ``(device_id, ts desc)``)."""

    async def insert_deadletters(self, records: Sequence[DeadLetterRecord]) -> None:
        docs = [_doc(r) for r in records]
        for i in range(0, len(docs), WRITE_CHUNK):
            try:
                await self._c(DEADLETTERS).insert_many(docs[i : i + WRITE_CHUNK], ordered=False)
            except BulkWriteError as err:  # a replay: those ids are stored already
                if not _only_duplicate_keys(err):
                    raise

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
        query = _filter(device_ids, reason=reason, end=before)
        if after is not None:
            ts, last = after
            query = {
                **query,
                "$or": [{"ts": {"$lt": ts}}, {"ts": ts, "_id": {"$lt": last}}],
            }
        cursor = (
            self._c(DEADLETTERS)
            .find(query)
            .sort([("ts", DESCENDING), ("_id", DESCENDING)])
            .limit(limit)
        )
        return [_from(d) for d in await cursor.to_list()]

    async def deadletter_counts(
        self, *, device_ids: Sequence[str] | None, start: float, end: float
    ) -> dict[str, int]:
        if device_ids is not None and not device_ids:
            return {}
        pipeline: list[Doc] = [
            {"$match": _filter(device_ids, start=start, end=end)},
            {"$group": {"_id": "$reason", "n": {"$sum": 1}}},
        ]
        docs = await (await self._c(DEADLETTERS).aggregate(pipeline)).to_list()
        return {d["_id"]: int(d["n"]) for d in sorted(docs, key=lambda d: d["_id"])}

    async def delete_deadletters_before(self, ts: float) -> int:
        res = await self._c(DEADLETTERS).delete_many({"ts": {"$lt": ts}})
        return res.deleted_count
