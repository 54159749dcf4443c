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

from iot_common.events import Alert
from iotctl.testinfra import psql_file
from monitoring_store import MonitoringStore, migrate, open_store
from monitoring_store.mongo.migrations import HEAD
from monitoring_store.mongo.migrations import StoreNotMigrated as MongoNotMigrated
from monitoring_store.postgres.migrations import StoreNotMigrated as PgNotMigrated
from monitoring_store.postgres.migrations import head_revision

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
