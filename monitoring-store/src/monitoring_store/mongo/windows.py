"""Window statistics on MongoDB: insert-first upserts on the bare key, index-led reads."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from iot_common.events import WindowStats
from monitoring_store.base import (
    Bucket,
    BucketSeries,
    FleetSummary,
    MetricSummary,
    check_bucket_sizes,
    dedupe_windows,
    series_from_buckets,
    window_size_for_range,
)
from monitoring_store.mongo.connection import (
    ALERTS,
    DUPLICATE_KEY,
    LATEST,
    WINDOWS,
    WRITE_CHUNK,
    Doc,
    MongoConnection,
    _lit,
)
from monitoring_store.mongo.latest import newest_readings, record_latest

_WINDOW_FIELDS = tuple(WindowStats.__struct_fields__)


def _device_windows(
    device_id: str,
    window_seconds: int,
    start: float,
    end: float,
    metrics: Sequence[str] | None,
    *,
    filled: bool = False,
) -> list[Doc]:
    """Leading ``$match`` stages selecting one device's windows of one size in [start, end).

    The first stage is exactly equality on the ``window_key`` index's first two fields and a
    range on the third, which the emulator serves as an index range scan (it plans from the
    first ``$match`` alone, and only from equalities plus one range); MongoDB merges the two
    stages and puts the metric list into the same index's bounds.
    """
    stages: list[Doc] = [
        {
            "$match": {
                "device_id": device_id,
                "window_seconds": window_seconds,
                "window_start": {"$gte": start, "$lt": end},
            }
        }
    ]
    rest: Doc = {"count": {"$gt": 0}} if filled else {}
    if metrics is not None:
        rest["metric"] = {"$in": list(metrics)}
    if rest:
        stages.append({"$match": rest})
    return stages


def _window_doc(w: WindowStats) -> Doc:
    return {f: getattr(w, f) for f in _WINDOW_FIELDS}


def window_key(w: WindowStats) -> Doc:
    """The filter that finds a stored window: its key and nothing else (see
    :func:`window_update`)."""
    return {
        "device_id": w.device_id,
        "window_seconds": w.window_seconds,
        "window_start": w.window_start,
        "metric": w.metric,
    }


def window_update(w: WindowStats) -> UpdateOne:
    """Rewrite a stored window with ``w`` unless the stored state is newer (``updated_at``).

    The comparison is inside the update pipeline rather than the filter, so the filter stays
    the bare key: an equality on every field of the unique ``window_key`` index, which every
    server answers with one index probe. An upsert, so a window deleted meanwhile (retention)
    comes back rather than being lost.
    """
    newer = {"$lte": [{"$ifNull": ["$updated_at", -math.inf]}, w.updated_at]}
    merged = {"$mergeObjects": ["$$ROOT", _lit(_window_doc(w))]}
    return UpdateOne(
        window_key(w), [{"$replaceWith": {"$cond": [newer, merged, "$$ROOT"]}}], upsert=True
    )


def _window_from(doc: Doc) -> WindowStats:
    return WindowStats(**{f: doc[f] for f in _WINDOW_FIELDS if f in doc})


class MongoWindows(MongoConnection):
    """Windows: the ``windows`` collection (regular, unique ``window_key``)."""

    async def upsert_windows(self, windows: Sequence[WindowStats]) -> None:
        """Insert the windows not stored yet; rewrite the others where this state is newer.

        Most windows a tick writes are new, and an insert is the cheapest write (on the
        emulator about a quarter of an upsert's cost). A key already present answers the
        insert with a duplicate-key error, and only those go through the conditional update,
        whose filter is the bare key, so it is one unique-index probe on every server (a filter
        with ``updated_at`` in it is a collection scan on the emulator).
        """
        rows = dedupe_windows(windows)
        coll = self._c(WINDOWS)
        await self._write_windows(coll, rows)
        # After the windows: a failure between the two fails the call, and the caller's retry
        # (both writes are idempotent) records the values then.
        await record_latest(self._c(LATEST), newest_readings(rows))

    async def _write_windows(self, coll: AsyncCollection[Doc], rows: Sequence[WindowStats]) -> None:
        for i in range(0, len(rows), WRITE_CHUNK):
            chunk = rows[i : i + WRITE_CHUNK]
            try:
                await coll.insert_many([_window_doc(w) for w in chunk], ordered=False)
                continue
            except BulkWriteError as err:
                errors = err.details.get("writeErrors", [])
                if not all(e.get("code") == DUPLICATE_KEY for e in errors):
                    raise
                present = [chunk[e["index"]] for e in errors]
            await coll.bulk_write([window_update(w) for w in present], ordered=False)

    async def rebuild_rollups(self) -> None:
        """Nothing to rebuild: every answer is aggregated from the windows at query time."""

    async def delete_windows_before(self, ts: float, *, window_seconds: int | None = None) -> int:
        query: Doc = {"window_start": {"$lt": ts}}
        if window_seconds is not None:
            query["window_seconds"] = window_seconds
        res = await self._c(WINDOWS).delete_many(query)
        if window_seconds is None:
            # Every size goes: so does a latest value no window holds any more.
            await self._c(LATEST).delete_many({"at.ts": {"$lt": ts}})
        return res.deleted_count

    async def query_windows(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        window_seconds: int,
        start: float,
        end: float,
    ) -> list[WindowStats]:
        pipeline = _device_windows(device_id, window_seconds, start, end, metrics)
        pipeline += [{"$sort": {"metric": 1, "window_start": 1}}, {"$project": {"_id": 0}}]
        docs = await (await self._c(WINDOWS).aggregate(pipeline)).to_list()
        return [_window_from(d) for d in docs]

    async def aggregate_window_series(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start: float,
        end: float,
        bucket_seconds: int,
        source_window_seconds: int,
    ) -> list[BucketSeries]:
        buckets = await self.aggregate_windows(
            device_id,
            metrics=metrics,
            start=start,
            end=end,
            bucket_seconds=bucket_seconds,
            source_window_seconds=source_window_seconds,
        )
        return series_from_buckets(buckets, bucket_seconds)

    async def aggregate_windows(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start: float,
        end: float,
        bucket_seconds: int,
        source_window_seconds: int,
    ) -> list[Bucket]:
        check_bucket_sizes(bucket_seconds, source_window_seconds)
        stages = _device_windows(device_id, source_window_seconds, start, end, metrics, filled=True)
        bucket = {"$subtract": ["$window_start", {"$mod": ["$window_start", bucket_seconds]}]}
        weighted = {"$multiply": ["$count", "$mean"]}
        pipeline: list[Doc] = [
            *stages,
            {"$set": {"bucket": bucket}},
            # The bucket mean first, so the pooled variance is taken around it (no
            # cancellation between two large sums).
            {
                "$setWindowFields": {
                    "partitionBy": {"m": "$metric", "b": "$bucket"},
                    "output": {"bn": {"$sum": "$count"}, "bs": {"$sum": weighted}},
                }
            },
            {"$set": {"bm": {"$divide": ["$bs", "$bn"]}}},
            {
                "$group": {
                    "_id": {"metric": "$metric", "bucket": "$bucket"},
                    "n": {"$sum": "$count"},
                    "mean": {"$first": "$bm"},
                    "lo": {"$min": "$min"},
                    "hi": {"$max": "$max"},
                    "ss": {
                        "$sum": {
                            "$multiply": [
                                "$count",
                                {
                                    "$add": [
                                        {"$multiply": ["$stddev", "$stddev"]},
                                        {
                                            "$pow": [{"$subtract": ["$mean", "$bm"]}, 2],
                                        },
                                    ]
                                },
                            ]
                        }
                    },
                    "s50": {"$sum": {"$multiply": ["$count", "$p50"]}},
                    "s95": {"$sum": {"$multiply": ["$count", "$p95"]}},
                    "p50_1": {"$first": "$p50"},
                    "p95_1": {"$first": "$p95"},
                    "last": {"$top": {"sortBy": {"last_ts": -1}, "output": "$last"}},
                    "k": {"$sum": 1},
                }
            },
            {"$sort": {"_id.metric": 1, "_id.bucket": 1}},
        ]
        cursor = await self._c(WINDOWS).aggregate(pipeline)
        out: list[Bucket] = []
        for d in await cursor.to_list():
            n = int(d["n"])
            exact = d["k"] == 1
            out.append(
                Bucket(
                    device_id=device_id,
                    metric=d["_id"]["metric"],
                    bucket_start=float(d["_id"]["bucket"]),
                    bucket_seconds=bucket_seconds,
                    count=n,
                    min=float(d["lo"]),
                    max=float(d["hi"]),
                    mean=float(d["mean"]),
                    stddev=math.sqrt(max(d["ss"] / n, 0.0)),
                    p50=float(d["p50_1"]) if exact else d["s50"] / n,
                    p95=float(d["p95_1"]) if exact else d["s95"] / n,
                    last=float(d["last"]),
                    exact_percentiles=exact,
                )
            )
        return out

    async def _window_sizes(self, start: float, end: float) -> list[int]:
        """The window sizes with a window starting in [start, end), ascending: two index
        probes per stored size (a loose scan of ``(window_seconds, window_start)``), not a pass
        over every window; a size no longer computed, or not yet, does not hide the others."""
        windows = self._c(WINDOWS)
        sizes: list[int] = []
        last: int | None = None
        while True:
            query: Doc = {"window_seconds": {"$gt": last}} if last is not None else {}
            doc = await windows.find_one(
                query, {"window_seconds": 1, "_id": 0}, sort=[("window_seconds", 1)]
            )
            if doc is None:
                return sizes
            last = int(doc["window_seconds"])
            inside = await windows.find_one(
                {"window_seconds": last, "window_start": {"$gte": start, "$lt": end}},
                {"window_seconds": 1, "_id": 0},
            )
            if inside is not None:
                sizes.append(last)

    async def fleet_summary(
        self,
        *,
        device_ids: Sequence[str] | None,
        start: float,
        end: float,
        window_seconds: int | None = None,
    ) -> FleetSummary:
        """Same definitions as :meth:`PostgresStore.fleet_summary`."""
        if device_ids is not None and not device_ids:
            return FleetSummary(
                start=start, end=end, devices_reporting=0, readings=0, readings_per_second=0.0
            )
        ids = sorted(set(device_ids)) if device_ids is not None else None
        windows = self._c(WINDOWS)
        ws = window_seconds
        if ws is None:
            ws = window_size_for_range(await self._window_sizes(start, end), start, end)
        metrics: list[MetricSummary] = []
        devices = readings = 0
        if ws is not None:
            # Equality plus one range first (an index range scan on every server), the rest
            # after it.
            rest: Doc = {"count": {"$gt": 0}}
            if ids is not None:
                rest["device_id"] = {"$in": ids}
            head = [
                {"$match": {"window_seconds": ws, "window_start": {"$gte": start, "$lt": end}}},
                {"$match": rest},
            ]
            mcur = await windows.aggregate(
                [
                    *head,
                    {
                        "$group": {
                            "_id": "$metric",
                            "n": {"$sum": "$count"},
                            "lo": {"$min": "$min"},
                            "hi": {"$max": "$max"},
                            "s": {"$sum": {"$multiply": ["$count", "$mean"]}},
                        }
                    },
                    {"$sort": {"_id": 1}},
                ]
            )
            metrics = [
                MetricSummary(
                    metric=d["_id"],
                    count=int(d["n"]),
                    min=float(d["lo"]),
                    max=float(d["hi"]),
                    mean=d["s"] / d["n"],
                )
                for d in await mcur.to_list()
            ]
            dcur = await windows.aggregate(
                [
                    *head,
                    {
                        "$group": {
                            "_id": {"d": "$device_id", "w": "$window_start"},
                            "n": {"$max": "$count"},
                        }
                    },
                    {"$group": {"_id": "$_id.d", "n": {"$sum": "$n"}}},
                    {"$group": {"_id": None, "devices": {"$sum": 1}, "readings": {"$sum": "$n"}}},
                ]
            )
            totals = await dcur.to_list()
            if totals:
                devices = int(totals[0]["devices"])
                readings = int(totals[0]["readings"])
        alert_stages: list[Doc] = [{"$match": {"started_at": {"$gte": start, "$lt": end}}}]
        if ids is not None:
            alert_stages.append({"$match": {"device_id": {"$in": ids}}})
        acur = await self._c(ALERTS).aggregate(
            [*alert_stages, {"$group": {"_id": "$severity", "n": {"$sum": 1}}}]
        )
        span = end - start
        return FleetSummary(
            start=start,
            end=end,
            devices_reporting=devices,
            readings=readings,
            readings_per_second=readings / span if span > 0 else 0.0,
            metrics=metrics,
            alerts_by_severity={d["_id"]: int(d["n"]) for d in await acur.to_list()},
        )
