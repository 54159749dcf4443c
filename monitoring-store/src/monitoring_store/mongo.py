"""MongoDB backend of the monitoring store (PyMongo's async API, ``AsyncMongoClient``).

Needs MongoDB 7.0 or later (deletes by time on time-series collections, ``$top``,
``$setWindowFields``). Collections and why:

* ``samples`` — a **time-series** collection (timeField ``t``, a BSON date; metaField
  ``m = {"d": device_id, "k": metric}``; ``ts`` keeps the exact float epoch, ``s`` the seq, -1
  when none). Raw samples are append-only and by far the largest data, which is what time-series
  bucketing and compression are for. Time-series collections allow no unique index, so a
  replayed reading cannot be refused on write; idempotency is enforced on **read**: every query
  collapses duplicates of (device, metric, ts, seq) to one sample. Replays only follow a crash
  (offsets are committed after the write), so the extra stored copies are rare, and retention
  removes them with the rest.
* ``windows`` — a **regular** collection with a unique index on
  ``(device_id, window_seconds, window_start, metric)``. A window is written more than once by
  design (late corrections, replays after a crash) and must end as one document with the
  newest values; time-series collections support neither unique indexes nor upserts, so they
  cannot give that guarantee. The key order matches the queries (one device, one size, a time
  range, all or some metrics); a second index ``(window_seconds, window_start)`` serves fleet
  summaries. Upserts carry ``updated_at <= new`` in their filter, so an older state never
  overwrites a newer one (the duplicate-key error that such a filter raises is the signal and is
  ignored).
* ``alerts`` (``_id`` = alert_id), ``device_rules`` (``_id`` = device id, guarded by version),
  ``subscriptions`` and ``deliveries`` (``_id`` = id): regular collections.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, CollectionInvalid, OperationFailure
from pymongo.uri_parser import parse_uri

from iot_common.events import Alert, WindowStats
from monitoring_store.base import (
    STATUS_RANK,
    AlertTransitionError,
    Bucket,
    BucketSeries,
    Delivery,
    DeviceRules,
    FleetSummary,
    MetricSummary,
    Sample,
    SampleBatch,
    Subscription,
    check_bucket_sizes,
    dedupe_windows,
    series_from_buckets,
    severities_at_least,
)

log = logging.getLogger(__name__)

Doc = dict[str, Any]
DEFAULT_DATABASE = "iot_monitoring"
WRITE_CHUNK = 50_000
DUPLICATE_KEY = 11000

_WINDOW_FIELDS = tuple(WindowStats.__struct_fields__)
_ALERT_FIELDS = tuple(Alert.__struct_fields__)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _date(ts: float) -> dt.datetime:
    return _EPOCH + dt.timedelta(seconds=ts)


def _lit(value: Any) -> Any:
    """A constant inside an aggregation expression (a string could start with ``$``)."""
    return {"$literal": value}


def _status_rank(expr: Any) -> Doc:
    return {
        "$switch": {
            "branches": [
                {"case": {"$eq": [expr, "active"]}, "then": 0},
                {"case": {"$eq": [expr, "acknowledged"]}, "then": 1},
            ],
            "default": 2,
        }
    }


def _only_duplicate_keys(err: BulkWriteError) -> bool:
    return all(e.get("code") == DUPLICATE_KEY for e in err.details.get("writeErrors", []))


def _window_doc(w: WindowStats) -> Doc:
    return {f: getattr(w, f) for f in _WINDOW_FIELDS}


def _window_from(doc: Doc) -> WindowStats:
    return WindowStats(**{f: doc[f] for f in _WINDOW_FIELDS if f in doc})


def _alert_from(doc: Doc) -> Alert:
    fields: dict[str, Any] = {f: doc.get(f) for f in _ALERT_FIELDS}
    return Alert(**fields)


def _sample_from(doc: Doc) -> Sample:
    seq = int(doc["s"])
    return Sample(
        device_id=doc["m"]["d"],
        metric=doc["m"]["k"],
        ts=float(doc["ts"]),
        value=float(doc["v"]),
        seq=None if seq < 0 else seq,
    )


def _delivery_doc(d: Delivery) -> Doc:
    return {
        "_id": d.id,
        "subscription_id": d.subscription_id,
        "payload": d.payload,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at,
        "last_error": d.last_error,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    }


def _delivery_from(doc: Doc) -> Delivery:
    return Delivery(
        id=doc["_id"],
        subscription_id=doc["subscription_id"],
        payload=doc["payload"],
        status=doc["status"],
        attempts=doc["attempts"],
        next_attempt_at=doc["next_attempt_at"],
        last_error=doc["last_error"],
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
    )


def _subscription_from(doc: Doc) -> Subscription:
    return Subscription(
        id=doc["_id"],
        owner_id=doc["owner_id"],
        url=doc["url"],
        secret=doc["secret"],
        device_ids=doc.get("device_ids"),
        min_severity=doc["min_severity"],
        rule_types=doc.get("rule_types"),
        created_at=doc["created_at"],
    )


class MongoStore:
    """The monitoring store on MongoDB (see the module docstring for the layout)."""

    def __init__(
        self,
        url: str,
        *,
        database: str | None = None,
        min_pool: int | None = None,
        max_pool: int | None = None,
        **client_options: Any,
    ) -> None:
        self._url = url
        self._db_name = database or parse_uri(url).get("database") or DEFAULT_DATABASE
        # the same pool options as the PostgreSQL backend, so callers need not care which
        if min_pool is not None:
            client_options.setdefault("minPoolSize", min_pool)
        if max_pool is not None:
            client_options.setdefault("maxPoolSize", max_pool)
        self._client_options = client_options
        self._client: AsyncMongoClient[Doc] | None = None

    @property
    def db(self) -> AsyncDatabase[Doc]:
        if self._client is None:
            raise RuntimeError("MongoStore.start() has not been called")
        return self._client[self._db_name]

    def _c(self, name: str) -> AsyncCollection[Doc]:
        return self.db[name]

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = AsyncMongoClient(self._url, tz_aware=True, **self._client_options)
        await self._client.aconnect()
        db = self.db
        try:
            await db.create_collection(
                "samples",
                timeseries={"timeField": "t", "metaField": "m", "granularity": "seconds"},
            )
        except (CollectionInvalid, OperationFailure) as exc:
            # Already there (possibly created by another process a moment ago).
            if isinstance(exc, OperationFailure) and exc.code != 48:  # NamespaceExists
                raise
        await db["samples"].create_index([("m.d", ASCENDING), ("t", DESCENDING)])
        await db["samples"].create_index([("t", DESCENDING)])
        windows = db["windows"]
        await windows.create_index(
            [
                ("device_id", ASCENDING),
                ("window_seconds", ASCENDING),
                ("window_start", ASCENDING),
                ("metric", ASCENDING),
            ],
            unique=True,
            name="window_key",
        )
        await windows.create_index([("window_seconds", ASCENDING), ("window_start", ASCENDING)])
        alerts = db["alerts"]
        await alerts.create_index([("started_at", DESCENDING)])
        await alerts.create_index([("device_id", ASCENDING), ("started_at", DESCENDING)])
        await alerts.create_index([("status", ASCENDING), ("started_at", DESCENDING)])
        await db["subscriptions"].create_index([("owner_id", ASCENDING), ("created_at", ASCENDING)])
        deliveries = db["deliveries"]
        await deliveries.create_index([("status", ASCENDING), ("next_attempt_at", ASCENDING)])
        await deliveries.create_index([("subscription_id", ASCENDING), ("created_at", DESCENDING)])

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def drop_database(self) -> None:
        """Drop this store's database (tests and benchmarks)."""
        if self._client is not None:
            await self._client.drop_database(self._db_name)

    # -- writes -----------------------------------------------------------------------------
    async def upsert_windows(self, windows: Sequence[WindowStats]) -> None:
        rows = dedupe_windows(windows)
        coll = self._c("windows")
        for i in range(0, len(rows), WRITE_CHUNK):
            ops = [
                UpdateOne(
                    {
                        "device_id": w.device_id,
                        "window_seconds": w.window_seconds,
                        "window_start": w.window_start,
                        "metric": w.metric,
                        "updated_at": {"$lte": w.updated_at},
                    },
                    {"$set": _window_doc(w)},
                    upsert=True,
                )
                for w in rows[i : i + WRITE_CHUNK]
            ]
            try:
                await coll.bulk_write(ops, ordered=False)
            except BulkWriteError as err:
                # A duplicate key means a newer state of that window is already stored.
                if not _only_duplicate_keys(err):
                    raise

    async def insert_samples(self, batch: SampleBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        devices = batch.device_id.tolist()
        metrics = batch.metric.tolist()
        ts = batch.ts.tolist()
        values = batch.value.tolist()
        seqs = batch.seq.tolist()
        coll = self._c("samples")
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

    async def upsert_alerts(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        ops = [self._alert_upsert(a) for a in sorted(alerts, key=lambda a: a.updated_at)]
        await self._c("alerts").bulk_write(ops, ordered=True)

    @staticmethod
    def _alert_upsert(a: Alert) -> UpdateOne:
        """Same rules as PostgreSQL: status only moves forward, ack/clear facts kept once set,
        descriptive fields follow the newer update."""
        newer = {"$gte": [_lit(a.updated_at), {"$ifNull": ["$updated_at", -math.inf]}]}

        def if_newer(field: str, value: Any) -> Doc:
            return {"$cond": [newer, _lit(value), f"${field}"]}

        def keep_first(field: str, value: Any) -> Doc:
            return {"$ifNull": [f"${field}", _lit(value)]}

        def prefer_new(field: str, value: Any) -> Any:
            return _lit(value) if value is not None else f"${field}"

        current_status = {"$ifNull": ["$status", "active"]}
        stage = {
            "alert_id": _lit(a.alert_id),
            "device_id": _lit(a.device_id),
            "rule_id": _lit(a.rule_id),
            "rule_type": _lit(a.rule_type),
            "started_at": _lit(a.started_at),
            "status": {
                "$cond": [
                    {"$gte": [_status_rank(_lit(a.status)), _status_rank(current_status)]},
                    _lit(a.status),
                    current_status,
                ]
            },
            "severity": if_newer("severity", a.severity),
            "message": if_newer("message", a.message),
            "metric": prefer_new("metric", a.metric),
            "value": (
                {"$cond": [newer, _lit(a.value), "$value"]} if a.value is not None else "$value"
            ),
            "threshold": prefer_new("threshold", a.threshold),
            "acknowledged_at": keep_first("acknowledged_at", a.acknowledged_at),
            "acknowledged_by": keep_first("acknowledged_by", a.acknowledged_by),
            "cleared_at": keep_first("cleared_at", a.cleared_at),
            "owner_id": prefer_new("owner_id", a.owner_id),
            "updated_at": {"$max": [_lit(a.updated_at), "$updated_at"]},
        }
        return UpdateOne({"_id": a.alert_id}, [{"$set": stage}], upsert=True)

    async def upsert_device_rules(self, rules: Sequence[DeviceRules]) -> None:
        latest: dict[str, DeviceRules] = {}
        for r in rules:
            prev = latest.get(r.device_id)
            if prev is None or r.version >= prev.version:
                latest[r.device_id] = r
        if not latest:
            return
        ops = [
            UpdateOne(
                {"_id": r.device_id, "version": {"$lte": r.version}},
                {
                    "$set": {
                        "owner_id": r.owner_id,
                        "device_type": r.device_type,
                        "config": r.config,
                        "version": r.version,
                        "active": r.active,
                    }
                },
                upsert=True,
            )
            for r in latest.values()
        ]
        try:
            await self._c("device_rules").bulk_write(ops, ordered=False)
        except BulkWriteError as err:  # a newer version is stored already
            if not _only_duplicate_keys(err):
                raise

    async def load_device_rules(self) -> list[DeviceRules]:
        docs = await self._c("device_rules").find().sort("_id", ASCENDING).to_list()
        return [
            DeviceRules(
                device_id=d["_id"],
                owner_id=d.get("owner_id"),
                device_type=d.get("device_type"),
                config=d.get("config") or {},
                version=int(d["version"]),
                active=bool(d.get("active", True)),
            )
            for d in docs
        ]

    async def delete_samples_before(self, ts: float) -> int:
        """Deletes stored sample documents before ``ts`` (duplicates from replays included)."""
        res = await self._c("samples").delete_many({"t": {"$lte": _date(ts)}, "ts": {"$lt": ts}})
        return res.deleted_count

    async def delete_windows_before(self, ts: float, *, window_seconds: int | None = None) -> int:
        query: Doc = {"window_start": {"$lt": ts}}
        if window_seconds is not None:
            query["window_seconds"] = window_seconds
        res = await self._c("windows").delete_many(query)
        return res.deleted_count

    # -- reads ------------------------------------------------------------------------------
    async def query_samples(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start: float,
        end: float,
        limit: int = 10_000,
    ) -> list[Sample]:
        match: Doc = {
            "m.d": device_id,
            # t is ms-truncated; widen by a millisecond and filter exactly on ts.
            "t": {"$gte": _date(start - 0.001), "$lte": _date(end)},
            "ts": {"$gte": start, "$lt": end},
        }
        if metrics is not None:
            match["m.k"] = {"$in": list(metrics)}
        pipeline: list[Doc] = [
            {"$match": match},
            {"$group": {"_id": {"k": "$m.k", "ts": "$ts", "s": "$s"}, "doc": {"$first": "$$ROOT"}}},
            {"$replaceRoot": {"newRoot": "$doc"}},
            {"$sort": {"ts": 1, "s": 1, "m.k": 1}},
            {"$limit": limit},
        ]
        cursor = await self._c("samples").aggregate(pipeline)
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
        async for doc in self._c("samples").find(query).sort([("t", -1), ("ts", -1)]):
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

    async def query_windows(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        window_seconds: int,
        start: float,
        end: float,
    ) -> list[WindowStats]:
        query: Doc = {
            "device_id": device_id,
            "window_seconds": window_seconds,
            "window_start": {"$gte": start, "$lt": end},
        }
        if metrics is not None:
            query["metric"] = {"$in": list(metrics)}
        docs = (
            await self._c("windows")
            .find(query, {"_id": 0})
            .sort([("metric", 1), ("window_start", 1)])
            .to_list()
        )
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
        match: Doc = {
            "device_id": device_id,
            "window_seconds": source_window_seconds,
            "window_start": {"$gte": start, "$lt": end},
            "count": {"$gt": 0},
        }
        if metrics is not None:
            match["metric"] = {"$in": list(metrics)}
        bucket = {"$subtract": ["$window_start", {"$mod": ["$window_start", bucket_seconds]}]}
        weighted = {"$multiply": ["$count", "$mean"]}
        pipeline: list[Doc] = [
            {"$match": match},
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
        cursor = await self._c("windows").aggregate(pipeline)
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
        windows = self._c("windows")
        ws = window_seconds
        if ws is None:
            sizes = sorted(int(x) for x in await windows.distinct("window_seconds"))
            if sizes:
                ws = sizes[0] if end - start <= 6 * 3600 else sizes[-1]
        metrics: list[MetricSummary] = []
        devices = readings = 0
        if ws is not None:
            match: Doc = {
                "window_seconds": ws,
                "window_start": {"$gte": start, "$lt": end},
                "count": {"$gt": 0},
            }
            if ids is not None:
                match["device_id"] = {"$in": ids}
            mcur = await windows.aggregate(
                [
                    {"$match": match},
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
                    {"$match": match},
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
        amatch: Doc = {"started_at": {"$gte": start, "$lt": end}}
        if ids is not None:
            amatch["device_id"] = {"$in": ids}
        acur = await self._c("alerts").aggregate(
            [{"$match": amatch}, {"$group": {"_id": "$severity", "n": {"$sum": 1}}}]
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
        if device_ids is not None and not device_ids:
            return []
        query: Doc = {}
        if device_ids is not None:
            query["device_id"] = {"$in": list(device_ids)}
        if status is not None:
            query["status"] = status
        if min_severity is not None:
            query["severity"] = {"$in": severities_at_least(min_severity)}
        started: Doc = {}
        if start is not None:
            started["$gte"] = start
        if end is not None:
            started["$lt"] = end
        if started:
            query["started_at"] = started
        docs = (
            await self._c("alerts")
            .find(query)
            .sort([("started_at", -1), ("_id", 1)])
            .skip(offset)
            .limit(limit)
            .to_list()
        )
        return [_alert_from(d) for d in docs]

    async def get_alert(self, alert_id: str) -> Alert | None:
        doc = await self._c("alerts").find_one({"_id": alert_id})
        return _alert_from(doc) if doc is not None else None

    async def transition_alert(
        self, alert_id: str, *, status: str, by: str | None, at: float
    ) -> Alert | None:
        """Same rules as :meth:`PostgresStore.transition_alert`."""
        if status not in ("acknowledged", "cleared"):
            raise ValueError(f"cannot transition an alert to {status!r}")
        alerts = self._c("alerts")
        while True:
            doc = await alerts.find_one({"_id": alert_id})
            if doc is None:
                return None
            current = _alert_from(doc)
            if current.status == status:
                return current
            if STATUS_RANK[status] < STATUS_RANK.get(current.status, 0):
                raise AlertTransitionError(current, status)
            changes: Doc = {"status": status, "updated_at": max(at, current.updated_at)}
            if status == "acknowledged":
                changes |= {"acknowledged_at": at, "acknowledged_by": by}
            else:
                changes["cleared_at"] = at
            # Compare-and-set on the status we checked; another writer in between → retry.
            new = await alerts.find_one_and_update(
                {"_id": alert_id, "status": current.status},
                {"$set": changes},
                return_document=ReturnDocument.AFTER,
            )
            if new is not None:
                return _alert_from(new)

    # -- subscriptions and deliveries -------------------------------------------------------
    async def create_subscription(self, sub: Subscription) -> None:
        await self._c("subscriptions").insert_one(
            {
                "_id": sub.id,
                "owner_id": sub.owner_id,
                "url": sub.url,
                "secret": sub.secret,
                "device_ids": sub.device_ids,
                "min_severity": sub.min_severity,
                "rule_types": sub.rule_types,
                "created_at": sub.created_at,
            }
        )

    async def list_subscriptions(self, *, owner_id: str | None) -> list[Subscription]:
        query: Doc = {} if owner_id is None else {"owner_id": owner_id}
        docs = (
            await self._c("subscriptions")
            .find(query)
            .sort([("created_at", 1), ("_id", 1)])
            .to_list()
        )
        return [_subscription_from(d) for d in docs]

    async def get_subscription(self, sub_id: str) -> Subscription | None:
        doc = await self._c("subscriptions").find_one({"_id": sub_id})
        return _subscription_from(doc) if doc is not None else None

    async def delete_subscription(self, sub_id: str, *, owner_id: str | None) -> bool:
        query: Doc = {"_id": sub_id}
        if owner_id is not None:
            query["owner_id"] = owner_id
        res = await self._c("subscriptions").delete_one(query)
        if res.deleted_count:
            await self._c("deliveries").delete_many({"subscription_id": sub_id})
            return True
        return False

    async def enqueue_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        sub_ids = {d.subscription_id for d in deliveries}
        existing = set(
            await self._c("subscriptions").distinct("_id", {"_id": {"$in": list(sub_ids)}})
        )
        docs = [_delivery_doc(d) for d in deliveries if d.subscription_id in existing]
        if not docs:
            return
        try:
            await self._c("deliveries").insert_many(docs, ordered=False)
        except BulkWriteError as err:  # ids already enqueued stay as they are
            if not _only_duplicate_keys(err):
                raise

    async def due_deliveries(
        self, *, now: float, limit: int, lease_seconds: float = 0.0
    ) -> list[Delivery]:
        """Same semantics as :meth:`PostgresStore.due_deliveries` (claimed one by one)."""
        coll = self._c("deliveries")
        query: Doc = {"status": "pending", "next_attempt_at": {"$lte": now}}
        if lease_seconds <= 0:
            docs = (
                await coll.find(query)
                .sort([("next_attempt_at", 1), ("created_at", 1)])
                .limit(limit)
                .to_list()
            )
            return [_delivery_from(d) for d in docs]
        claimed: list[Delivery] = []
        for _ in range(limit):
            doc = await coll.find_one_and_update(
                query,
                {"$set": {"next_attempt_at": now + lease_seconds}},
                sort=[("next_attempt_at", 1)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(_delivery_from(doc))
        return sorted(claimed, key=lambda d: d.created_at)

    async def update_delivery(self, delivery: Delivery) -> None:
        doc = _delivery_doc(delivery)
        doc.pop("_id")
        doc.pop("subscription_id")
        doc.pop("created_at")
        await self._c("deliveries").update_one({"_id": delivery.id}, {"$set": doc})

    async def list_deliveries(
        self, *, subscription_id: str, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        query: Doc = {"subscription_id": subscription_id}
        if status is not None:
            query["status"] = status
        docs = (
            await self._c("deliveries")
            .find(query)
            .sort([("created_at", -1), ("_id", 1)])
            .limit(limit)
            .to_list()
        )
        return [_delivery_from(d) for d in docs]
