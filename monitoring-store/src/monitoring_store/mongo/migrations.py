"""Versioned schema of the MongoDB store: collections, indexes and time-series options.

Each migration is a numbered async step over the database; the versions applied are recorded
in the store's own ``schema_migrations`` collection (``{_id: version, name, applied_at}``), so a
store says which layout it has. ``monitoring-store migrate`` (the compose/Kubernetes one-shot job
and ``iotctl up``) and ``MongoStore.start()`` when the store is behind both run
:func:`migrate`. Concurrent migrators take turns on a lease document (``_id: "lock"``); a
migrator that dies leaves a lease that expires. Every step is written to be re-run safely after
a crash half-way (it is recorded only once it has finished).

1. ``initial`` — what ``start()`` created before the schema was versioned: ``samples``
   (time-series, timeField ``t``, metaField ``m``, granularity seconds), ``windows`` (unique
   ``window_key``), ``alerts``, ``device_rules``, ``subscriptions``, ``deliveries`` and their
   indexes. On a store made by that code it only confirms what is there.
2. ``design names`` — the collection names of the platform's design: raw samples in
   ``monitoring_data``, alerts in ``device_alerts``. Alerts are renamed in place. MongoDB cannot
   rename a time-series collection, so samples are copied into a new time-series collection in
   batches and the old one dropped (a crash before the drop restarts the copy from scratch).
3. ``deadletters`` — refused messages per device (``_id`` = where each was read), indexed for
   "this device's newest" and for retention and counts by time.
4. ``latest values`` — the newest reading of each device × metric the windows saw (``_id`` =
   ``metric/device``), indexed by device; filled from the stored windows, in the layout it was
   released with (``{d, k, ts, s: -1, v}``).
5. ``latest values as {ts, v}`` — each latest value's reading moves into the embedded
   ``at: {ts, v}`` that the window writes' ``$max`` keeps (``mongo/latest.py``), and the
   ``ts``, ``s`` and ``v`` fields go: one update pipeline on the server. A document that a
   window write of the newer code already gave an ``at`` keeps the newer of the two readings.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, DuplicateKeyError, OperationFailure

from monitoring_store.mongo.connection import (
    ALERTS,
    DEADLETTERS,
    DELIVERIES,
    LATEST,
    SAMPLES,
    SUBSCRIPTIONS,
    WINDOWS,
    WRITE_CHUNK,
    Doc,
    _lit,
)
from monitoring_store.mongo.latest import latest_key

log = logging.getLogger(__name__)

MIGRATIONS_COLLECTION = "schema_migrations"
LOCK_ID = "lock"
LOCK_LEASE_SECONDS = 600.0
COPY_BATCH = 10_000
TIMESERIES = {"timeField": "t", "metaField": "m", "granularity": "seconds"}
#: The names before migration 2.
OLD_SAMPLES, OLD_ALERTS = "samples", "alerts"

Database = AsyncDatabase[Doc]


class StoreNotMigrated(RuntimeError):
    """The store's schema is not at the newest migration and may not be upgraded here."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Database], Awaitable[None]]


async def _collections(db: Database) -> set[str]:
    return set(await db.list_collection_names())


async def _create_timeseries(db: Database, name: str) -> None:
    try:
        await db.create_collection(name, timeseries=TIMESERIES)
    except (CollectionInvalid, OperationFailure) as exc:
        # Already there (possibly created by another process a moment ago).
        if isinstance(exc, OperationFailure) and exc.code != 48:  # NamespaceExists
            raise


async def _sample_indexes(db: Database, name: str) -> None:
    await db[name].create_index([("m.d", ASCENDING), ("t", DESCENDING)])
    await db[name].create_index([("t", DESCENDING)])


async def _alert_indexes(db: Database, name: str) -> None:
    alerts = db[name]
    await alerts.create_index([("started_at", DESCENDING)])
    await alerts.create_index([("device_id", ASCENDING), ("started_at", DESCENDING)])
    await alerts.create_index([("status", ASCENDING), ("started_at", DESCENDING)])


async def _initial(db: Database) -> None:
    await _create_timeseries(db, OLD_SAMPLES)
    await _sample_indexes(db, OLD_SAMPLES)
    windows = db[WINDOWS]
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
    await _alert_indexes(db, OLD_ALERTS)
    await db[SUBSCRIPTIONS].create_index([("owner_id", ASCENDING), ("created_at", ASCENDING)])
    deliveries = db[DELIVERIES]
    await deliveries.create_index([("status", ASCENDING), ("next_attempt_at", ASCENDING)])
    await deliveries.create_index([("subscription_id", ASCENDING), ("created_at", DESCENDING)])


async def _design_names(db: Database) -> None:
    names = await _collections(db)
    if OLD_ALERTS in names:
        if ALERTS in names:  # both: only possible if something else created the new one
            raise RuntimeError(f"both {OLD_ALERTS!r} and {ALERTS!r} exist: merge them by hand")
        await db[OLD_ALERTS].rename(ALERTS)
    await _alert_indexes(db, ALERTS)
    if OLD_SAMPLES in names:
        # A partial copy from an interrupted run is dropped: the old collection is complete.
        await db.drop_collection(SAMPLES)
        await _create_timeseries(db, SAMPLES)
        target = db[SAMPLES]
        batch: list[Doc] = []
        copied = 0
        async for doc in db[OLD_SAMPLES].find({}, {"_id": 0}):
            batch.append(doc)
            if len(batch) >= COPY_BATCH:
                await target.insert_many(batch, ordered=False)
                copied += len(batch)
                batch = []
        if batch:
            await target.insert_many(batch, ordered=False)
            copied += len(batch)
        await db.drop_collection(OLD_SAMPLES)
        log.info("copied %d samples from %s to %s", copied, OLD_SAMPLES, SAMPLES)
    else:
        await _create_timeseries(db, SAMPLES)
    await _sample_indexes(db, SAMPLES)


async def _deadletters(db: Database) -> None:
    await db[DEADLETTERS].create_index([("device_id", ASCENDING), ("ts", DESCENDING)])
    await db[DEADLETTERS].create_index([("ts", ASCENDING)])


async def _record_latest_v4(
    coll: AsyncCollection[Doc], newest: dict[tuple[str, str], tuple[float, float]]
) -> None:
    """The latest-value upkeep migration 4 was released with (``{d, k, ts, s, v}``): frozen
    here, since a released migration must not change what it leaves; migration 5 converts."""
    updates = []
    for (d, m), (t, v) in sorted(newest.items()):
        older = {"$lt": [{"$ifNull": ["$ts", -math.inf]}, t]}
        merged = {"$mergeObjects": ["$$ROOT", _lit({"d": d, "k": m, "ts": t, "s": -1, "v": v})]}
        updates.append(
            UpdateOne(
                {"_id": latest_key(d, m)},
                [{"$replaceWith": {"$cond": [older, merged, "$$ROOT"]}}],
                upsert=True,
            )
        )
    for i in range(0, len(updates), WRITE_CHUNK):
        await coll.bulk_write(updates[i : i + WRITE_CHUNK], ordered=False)


async def _latest_values(db: Database) -> None:
    await db[LATEST].create_index([("d", ASCENDING)])
    newest = await db[WINDOWS].aggregate(
        [
            {"$match": {"count": {"$gt": 0}}},
            {
                "$group": {
                    "_id": {"d": "$device_id", "k": "$metric"},
                    "top": {
                        "$top": {
                            "sortBy": {"last_ts": -1},
                            "output": {"ts": "$last_ts", "v": "$last"},
                        }
                    },
                }
            },
        ]
    )
    batch: dict[tuple[str, str], tuple[float, float]] = {}
    async for doc in newest:
        batch[(doc["_id"]["d"], doc["_id"]["k"])] = (
            float(doc["top"]["ts"]),
            float(doc["top"]["v"]),
        )
        if len(batch) >= COPY_BATCH:
            await _record_latest_v4(db[LATEST], batch)
            batch = {}
    if batch:
        await _record_latest_v4(db[LATEST], batch)


async def _latest_at(db: Database) -> None:
    # Only documents of migration 4's layout match, so a re-run after a crash converts the rest.
    # $max of the two embedded documents: the newer ts wins, as in the window writes' $max (a
    # missing at, null, loses to any document).
    await db[LATEST].update_many(
        {"ts": {"$exists": True}},
        [
            {"$set": {"at": {"$max": ["$at", {"ts": "$ts", "v": "$v"}]}}},
            {"$unset": ["ts", "s", "v"]},
        ],
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", _initial),
    Migration(2, "design names: monitoring_data, device_alerts", _design_names),
    Migration(3, "deadletters", _deadletters),
    Migration(4, "latest values", _latest_values),
    Migration(5, "latest values as {ts, v}", _latest_at),
)
HEAD = MIGRATIONS[-1].version


async def schema_version(db: Database) -> int:
    """The newest migration applied to ``db`` (0: none)."""
    doc = await db[MIGRATIONS_COLLECTION].find_one(
        {"_id": {"$type": "number"}}, sort=[("_id", DESCENDING)]
    )
    return int(doc["_id"]) if doc else 0


async def _acquire(db: Database, owner: str, wait_seconds: float) -> None:
    coll = db[MIGRATIONS_COLLECTION]
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        now = dt.datetime.now(dt.UTC)
        until = now + dt.timedelta(seconds=LOCK_LEASE_SECONDS)
        try:
            await coll.insert_one({"_id": LOCK_ID, "owner": owner, "until": until})
            return
        except DuplicateKeyError:
            # An expired lease (its migrator died) is taken over.
            taken = await coll.find_one_and_update(
                {"_id": LOCK_ID, "until": {"$lt": now}}, {"$set": {"owner": owner, "until": until}}
            )
            if taken is not None:
                return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("another process holds the store's migration lock")
        await asyncio.sleep(0.2)


async def migrate(db: Database, *, lock_wait_seconds: float = 600.0) -> int:
    """Apply the migrations ``db`` lacks, in order; returns the version it is at."""
    owner = secrets.token_hex(8)
    await _acquire(db, owner, lock_wait_seconds)
    coll = db[MIGRATIONS_COLLECTION]
    try:
        done = await schema_version(db)
        for m in MIGRATIONS:
            if m.version <= done:
                continue
            log.info("monitoring store (MongoDB) migration %d: %s", m.version, m.name)
            await m.apply(db)
            record: dict[str, Any] = {
                "_id": m.version,
                "name": m.name,
                "applied_at": dt.datetime.now(dt.UTC),
            }
            await coll.insert_one(record)
        return await schema_version(db)
    finally:
        await coll.delete_one({"_id": LOCK_ID, "owner": owner})
