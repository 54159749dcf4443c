"""Raw samples on MongoDB: a time-series collection, duplicates collapsed on read."""

from __future__ import annotations

from collections.abc import Sequence

from monitoring_store.base import (
    Sample,
    SampleBatch,
)
from monitoring_store.mongo.connection import (
    SAMPLES,
    WRITE_CHUNK,
    Doc,
    MongoConnection,
    _date,
)


def _sample_from(doc: Doc) -> Sample:
    seq = int(doc["s"])
    return Sample(
        device_id=doc["m"]["d"],
        metric=doc["m"]["k"],
        ts=float(doc["ts"]),
        value=float(doc["v"]),
        seq=None if seq < 0 else seq,
    )


class MongoSamples(MongoConnection):
    """Raw samples: the time-series collection."""

    async def insert_samples(self, batch: SampleBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        devices = batch.device_id.tolist()
        metrics = batch.metric.tolist()
        ts = batch.ts.tolist()
        values = batch.value.tolist()
        seqs = batch.seq.tolist()
        coll = self._c(SAMPLES)
        for i in range(0, n, WRITE_CHUNK):
            docs = [
                {
                    "t": _date(ts[j]),
                    "m": {"d": devices[j], "k": metrics[j]},
                    "ts": ts[j],
                    "v": values[j],
                    "s": seqs[j],
                }
                for j in range(i, min(i + WRITE_CHUNK, n))
            ]
            await coll.insert_many(docs, ordered=False)

    async def delete_samples_before(self, ts: float) -> int:
        """Deletes stored sample documents before ``ts`` (duplicates from replays included)."""
        res = await self._c(SAMPLES).delete_many({"t": {"$lte": _date(ts)}, "ts": {"$lt": ts}})
        return res.deleted_count

    async def query_samples(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start: float,
        end: float,
        limit: int = 10_000,
    ) -> list[Sample]:
        # t is ms-truncated: widen by a millisecond, then filter exactly on ts. The device and
        # the time range alone first (an index range scan on every server).
        rest: Doc = {"ts": {"$gte": start, "$lt": end}}
        if metrics is not None:
            rest["m.k"] = {"$in": list(metrics)}
        pipeline: list[Doc] = [
            {"$match": {"m.d": device_id, "t": {"$gte": _date(start - 0.001), "$lte": _date(end)}}},
            {"$match": rest},
            {"$group": {"_id": {"k": "$m.k", "ts": "$ts", "s": "$s"}, "doc": {"$first": "$$ROOT"}}},
            {"$replaceRoot": {"newRoot": "$doc"}},
            {"$sort": {"ts": 1, "s": 1, "m.k": 1}},
            {"$limit": limit},
        ]
        cursor = await self._c(SAMPLES).aggregate(pipeline)
        return [_sample_from(d) for d in await cursor.to_list()]

    async def recent_samples(
        self,
        *,
        device_ids: Sequence[str] | None,
        metric: str | None = None,
        since: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Sample]:
        if device_ids is not None and not device_ids:
            return []
        query: Doc = {}
        if device_ids is not None:
            query["m.d"] = {"$in": sorted(set(device_ids))}
        if metric is not None:
            query["m.k"] = metric
        if since is not None:
            query["t"] = {"$gte": _date(since - 0.001)}
            query["ts"] = {"$gte": since}
        wanted = limit + offset
        seen: set[tuple[str, str, float, int]] = set()
        found: list[Sample] = []
        cutoff: float | None = None
        # Stream newest first, dropping replayed duplicates, until the page is full and the
        # samples tied with its last one are in too (so the tie order below is stable).
        async for doc in self._c(SAMPLES).find(query).sort([("t", -1), ("ts", -1)]):
            s = _sample_from(doc)
            if cutoff is not None and s.ts < cutoff:
                break
            k = (s.device_id, s.metric, s.ts, int(doc["s"]))
            if k in seen:
                continue
            seen.add(k)
            found.append(s)
            if len(found) >= wanted and cutoff is None:
                cutoff = s.ts
        found.sort(
            key=lambda s: (-s.ts, s.device_id, -(s.seq if s.seq is not None else -1), s.metric)
        )
        return found[offset:wanted]
