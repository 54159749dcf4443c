"""Versioned schema: a store written by the code before it is upgraded and reads back whole.

``legacy/postgres-v0.sql`` (``pg_dump``) and ``legacy/mongodb-v0.json`` (every collection's
options, indexes and documents, canonical extended JSON) were written by the store as it was on
main before the schema was versioned (commit 3fc0dc6: ``start()`` creating tables and
collections ad hoc), from exactly the data defined below. Each test restores one, runs the real
``monitoring-store migrate`` command on it, and reads every resource back through the store.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from bson import json_util
from pymongo import AsyncMongoClient

from iot_common.events import Alert, WindowStats
from iotctl.testinfra import psql, psql_file
from monitoring_store import MonitoringStore, migrate, open_store
from monitoring_store.mongo.migrations import HEAD, MIGRATIONS, MIGRATIONS_COLLECTION
from monitoring_store.mongo.migrations import StoreNotMigrated as MongoNotMigrated
from monitoring_store.postgres.migrations import StoreNotMigrated as PgNotMigrated
from monitoring_store.postgres.migrations import head_revision
from monitoring_store.postgres.migrations import migrate as pg_migrate

T0 = 1_789_948_800.0
LEGACY = Path(__file__).with_name("legacy")


def _run_migrate(url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "monitoring_store.cli", "migrate", "--url", url],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MONITORING_STORE_URL": "postgresql://nowhere.invalid/x"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _reads_back_everything(store: MonitoringStore) -> None:
    """Every resource the legacy store held, as it was written."""
    for d in ("d1", "d2"):
        for size in (10, 60):
            got = await store.query_windows(
                d, metrics=None, window_seconds=size, start=T0, end=T0 + 6 * size
            )
            assert [(w.metric, w.window_start, w.count, w.mean, w.last) for w in got] == [
                (m, T0 + i * size, i + 1, 5.0 + i, 4.0 + i)
                for m in ("hum", "temp")
                for i in range(6)
            ]
        samples = await store.query_samples(d, metrics=None, start=T0, end=T0 + 10)
        assert [(s.metric, s.ts, s.value, s.seq) for s in samples] == [
            (m, T0 + i, float(i) + (0.5 if m == "hum" else 0.0), i)
            for i in range(10)
            for m in ("hum", "temp")
        ]
    # Each metric's latest value, filled in from the windows the store already held: the
    # newest reading any of its windows saw.
    newest: dict[tuple[str, str], tuple[float, float]] = {}
    for d in ("d1", "d2"):
        for size in (10, 60):
            for w in await store.query_windows(
                d, metrics=None, window_seconds=size, start=T0, end=T0 + 6 * size
            ):
                newest[(d, w.metric)] = max(
                    newest.get((d, w.metric), (-1.0, 0.0)), (w.last_ts, w.last)
                )
    latest = await store.latest_values(device_ids=["d1", "d2"])
    assert len(newest) == 4
    assert [(s.device_id, s.metric, s.ts, s.value) for s in latest] == [
        (d, m, *newest[(d, m)]) for d, m in sorted(newest)
    ]
    alerts = await store.query_alerts()
    assert [(a.alert_id, a.status, a.severity, a.acknowledged_by) for a in alerts] == [
        ("a2", "active", "warning", None),
        ("a1", "acknowledged", "critical", "u1"),
    ]
    assert isinstance(alerts[0], Alert)
    (rules,) = await store.load_device_rules()
    assert (rules.device_id, rules.version, rules.config["rules"][0]["above"]) == ("d1", 3, 30)
    (sub,) = await store.list_subscriptions(owner_id="u1")
    assert (sub.id, sub.url, sub.device_ids, sub.secret) == (
        "s1",
        "https://hooks.example.com/x",
        ["d1"],
        "sekrit",
    )
    (delivery,) = await store.list_deliveries(subscription_id="s1")
    assert (delivery.id, delivery.payload, delivery.attempts, delivery.last_error) == (
        "dl1",
        {"alert_id": "a1"},
        1,
        "HTTP 503",
    )
    summary = await store.fleet_summary(device_ids=None, start=T0, end=T0 + 3600)
    assert summary.devices_reporting == 2
    assert summary.alerts_by_severity == {"critical": 1, "warning": 1}
    # The upgraded store takes writes like a new one.
    moved = await store.transition_alert("a2", status="acknowledged", by="u2", at=T0 + 99)
    assert moved is not None and moved.status == "acknowledged"
    assert await store.get_alert("a2") == moved


async def test_postgres_store_of_the_unversioned_code_upgrades_and_reads_back(
    pg_database_factory: Callable[[str], str],
) -> None:
    url = pg_database_factory("legacy")
    psql_file(LEGACY / "postgres-v0.sql", url=url)
    refused = open_store(url, migrate=False)
    with pytest.raises(PgNotMigrated, match="monitoring-store migrate"):
        await refused.start()
    assert f"schema version {head_revision()}" in _run_migrate(url)
    store = open_store(url, migrate=False)  # as a service does once the job has run
    await store.start()
    try:
        assert await store.schema_version() == head_revision()
        await _reads_back_everything(store)
    finally:
        await store.close()
    assert f"schema version {head_revision()}" in _run_migrate(url)  # again: nothing to do


def _window(device_id: str, metric: str, start: float, last_ts: float, last: float) -> WindowStats:
    return WindowStats(
        device_id, metric, 10, start, 1, last, last, last, 0.0, last, last, last, last_ts
    )


async def _window_writes_move_the_latest_values(store: MonitoringStore) -> None:
    """On a store upgraded from the released latest-values layout (d1, d2 filled from their
    windows by the migration; d3 written by that release's window writes at T0 + 500 s, 7.0):
    window writes succeed, a newer reading moves a latest value, an older one leaves it."""
    before = {
        (s.device_id, s.metric): (s.ts, s.value)
        for s in await store.latest_values(device_ids=["d1", "d2", "d3"])
    }
    assert before[("d3", "temp")] == (T0 + 500, 7.0)
    newer, older = before[("d1", "temp")][0] + 1000, before[("d2", "temp")][0] - 1
    await store.upsert_windows(
        [
            _window("d1", "temp", T0 + 990, newer, 41.0),  # newer than the migrated value
            _window("d2", "temp", T0 - 3600, older, -5.0),  # older: stays
            _window("d3", "temp", T0 + 400, T0 + 400, 3.0),  # older than the released write
            _window("d3", "hum", T0 + 600, T0 + 601, 55.0),  # a new key beside it
        ]
    )
    after = await store.latest_values(device_ids=["d1", "d2", "d3"])
    assert {(s.device_id, s.metric): (s.ts, s.value) for s in after} == {
        **before,
        ("d1", "temp"): (newer, 41.0),
        ("d3", "hum"): (T0 + 601, 55.0),
    }
    temps = {s.device_id: s.value for s in after if s.metric == "temp"}
    assert await store.rank_by_latest(
        metric="temp", device_ids=["d1", "d2", "d3"], descending=True, limit=3
    ) == sorted(temps, key=lambda d: -temps[d])
    await store.upsert_windows([_window("d3", "temp", T0 + 700, T0 + 701, 8.0)])
    (d3_temp,) = [s for s in await store.latest_values(device_ids=["d3"]) if s.metric == "temp"]
    assert (d3_temp.ts, d3_temp.value) == (T0 + 701, 8.0)


async def test_postgres_store_of_the_released_latest_values_upgrades(
    pg_database_factory: Callable[[str], str],
) -> None:
    """A store at 0003 as released (``monitoring_latest.seq bigint NOT NULL``, -1 in every row
    the window writes of that release made) upgrades to head and takes window writes."""
    url = pg_database_factory("latest0003")
    psql_file(LEGACY / "postgres-v0.sql", url=url)
    assert await pg_migrate(url, revision="0003") == "0003"
    columns = psql(
        "SELECT column_name || ' ' || data_type || ' ' || is_nullable FROM "
        "information_schema.columns WHERE table_name = 'monitoring_latest' "
        "ORDER BY ordinal_position",
        url=url,
    )
    # As released: a released migration never changes.
    assert "seq bigint NO" in [line.strip() for line in columns.splitlines()]
    psql(  # what that release's window write left for a device
        "INSERT INTO monitoring_latest (device_id, metric, ts, seq, value) "
        f"VALUES ('d3', 'temp', {T0 + 500}, -1, 7.0)",
        url=url,
    )
    assert f"schema version {head_revision()}" in _run_migrate(url)
    store = open_store(url, migrate=False)
    await store.start()
    try:
        await _reads_back_everything(store)
        await _window_writes_move_the_latest_values(store)
    finally:
        await store.close()


async def test_postgres_concurrent_migrators_migrate_once(
    pg_database_factory: Callable[[str], str],
) -> None:
    url = pg_database_factory("migrators")
    assert await asyncio.gather(migrate(url), migrate(url), migrate(url)) == [head_revision()] * 3


async def _restore_mongo(url: str, database: str) -> None:
    dump = json_util.loads((LEGACY / "mongodb-v0.json").read_text(encoding="utf-8"))
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    db = client[database]
    try:
        for name, coll in dump.items():
            await db.create_collection(name, **coll["options"])
            for index in coll["indexes"]:
                keys = list(index["key"].items())
                extra = {k: v for k, v in index.items() if k in ("unique", "name")}
                await db[name].create_index(keys, **extra)
            if coll["documents"]:
                await db[name].insert_many(coll["documents"])
    finally:
        await client.close()


async def test_mongodb_store_of_the_unversioned_code_upgrades_and_reads_back(
    mongodb_url: str,
) -> None:
    database = f"iot_legacy_{secrets.token_hex(4)}"
    url = f"{mongodb_url.rstrip('/')}/{database}"
    await _restore_mongo(mongodb_url, database)
    refused = open_store(url, migrate=False)
    with pytest.raises(MongoNotMigrated, match="monitoring-store migrate"):
        await refused.start()
    assert f"schema version {HEAD}" in _run_migrate(url)
    store = open_store(url, migrate=False)
    await store.start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    try:
        assert await store.schema_version() == str(HEAD)
        await _reads_back_everything(store)
        db = client[database]
        listed = {c["name"]: c for c in await (await db.list_collections()).to_list()}
        # The design's names; the old ones are gone, their data moved.
        assert {"monitoring_data", "device_alerts", "windows", "schema_migrations"} <= set(listed)
        assert not {"samples", "alerts"} & set(listed)
        assert listed["monitoring_data"]["options"]["timeseries"]["timeField"] == "t"
        applied = await db["schema_migrations"].find({"_id": {"$type": "number"}}).to_list()
        assert [m["_id"] for m in applied] == list(range(1, HEAD + 1))
    finally:
        await client.drop_database(database)
        await client.close()
        await store.close()


async def test_mongodb_store_of_the_released_latest_values_upgrades(
    mongodb_url: str,
) -> None:
    """A store at migration 4 as released (latest values ``{d, k, ts, s: -1, v}``, the layout
    of that release's window writes too) upgrades to head and takes window writes."""
    database = f"iot_latest4_{secrets.token_hex(4)}"
    url = f"{mongodb_url.rstrip('/')}/{database}"
    await _restore_mongo(mongodb_url, database)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    db = client[database]
    store = open_store(url, migrate=False)
    try:
        for m in MIGRATIONS[:4]:
            await m.apply(db)
            await db[MIGRATIONS_COLLECTION].insert_one({"_id": m.version, "name": m.name})
        filled = await db["latest_values"].find_one({"_id": "temp/d1"}, {"_id": 0})
        assert filled is not None and sorted(filled) == ["d", "k", "s", "ts", "v"]  # as released
        # What that release's window write left for a device.
        await db["latest_values"].insert_one(
            {"_id": "temp/d3", "d": "d3", "k": "temp", "ts": T0 + 500, "s": -1, "v": 7.0}
        )
        # Both layouts: an old document that main's code between the two migrations (ab501e2
        # 7e7d426, head 4 with the {ts, v} upkeep) gave an older reading (the newer one stays)
        # and one it gave a newer reading.
        await db["latest_values"].insert_many(
            [
                {"_id": f"{k}/d4", "d": "d4", "k": k, "ts": T0 + t, "s": -1, "v": v, "at": at}
                for k, t, v, at in (
                    ("hum", 800, 1.0, {"ts": T0 + 700, "v": 2.0}),
                    ("temp", 800, 1.0, {"ts": T0 + 900, "v": 3.0}),
                )
            ]
        )
        assert f"schema version {HEAD}" in _run_migrate(url)
        await store.start()
        d4 = await store.latest_values(device_ids=["d4"])
        assert [(s.metric, s.ts, s.value) for s in d4] == [
            ("hum", T0 + 800, 1.0),
            ("temp", T0 + 900, 3.0),
        ]
        await _reads_back_everything(store)
        await _window_writes_move_the_latest_values(store)
        # Nothing of the old layout is left for the window writes' $max to miss.
        assert await db["latest_values"].count_documents({"ts": {"$exists": True}}) == 0
    finally:
        await store.close()
        await client.drop_database(database)
        await client.close()


@pytest.fixture
async def mongo_database(mongodb_url: str) -> AsyncIterator[tuple[str, Any]]:
    """A database of this test's own on the session's server: its URL and a handle to it."""
    name = f"iot_migrations_{secrets.token_hex(4)}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    try:
        yield f"{mongodb_url.rstrip('/')}/{name}", client[name]
    finally:
        await client.drop_database(name)
        await client.close()


async def test_mongodb_store_written_by_newer_code_is_refused_not_touched(
    mongo_database: tuple[str, Any],
) -> None:
    url, db = mongo_database
    current = open_store(url)
    await current.start()
    await current.close()
    await db["schema_migrations"].insert_one({"_id": HEAD + 1, "name": "next"})
    newer = open_store(url)  # even a store allowed to migrate leaves a newer schema alone
    with pytest.raises(MongoNotMigrated, match=f"version {HEAD + 1}, newer.*upgrade the code"):
        await newer.start()
    applied = await db["schema_migrations"].count_documents({"_id": {"$type": "number"}})
    assert applied == HEAD + 1


async def test_mongodb_concurrent_migrators_migrate_once(mongo_database: tuple[str, Any]) -> None:
    url, db = mongo_database
    assert await asyncio.gather(migrate(url), migrate(url), migrate(url)) == [str(HEAD)] * 3
    # each migration recorded once, and no lock left behind
    records = await db["schema_migrations"].find().to_list()
    assert sorted(r["_id"] for r in records) == list(range(1, HEAD + 1))
