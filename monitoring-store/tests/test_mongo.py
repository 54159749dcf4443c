"""MongoDB-specific behaviour: what the store sends is served from an index, not a scan.

Every command the store sends is captured with PyMongo's command monitoring, and the filter or
pipeline it carried is explained on the same server. An operator's store holds millions of
windows: a write or a read that scans the collection gets slower with every hour stored (on the
emulator, 3,000 window upserts took 63.6 s when their filter was not index-served).

The emulator's ``explain`` of an ``update`` ignores the update's query and always answers
COLLSCAN, so a write's filter is explained as the ``find`` with the same filter: the same
planner decision on MongoDB and on the emulator (whose write path and find path share one
index picker).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import numpy as np
import pytest
from pymongo import AsyncMongoClient, monitoring

from iot_common.events import WindowStats
from iotctl.sandbox import PrivateMongoDB
from monitoring_store import SampleBatch
from monitoring_store.mongo import MongoStore

T0 = 1_789_948_800.0


class Commands(monitoring.CommandListener):
    """The commands a client sent, by name."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def named(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.sent if name in c]


@pytest.fixture
async def watched(mongodb_url: str) -> AsyncIterator[tuple[MongoStore, Commands]]:
    commands = Commands()
    store = MongoStore(
        mongodb_url, database=f"iot_plan_{secrets.token_hex(4)}", event_listeners=[commands]
    )
    await store.start()
    try:
        yield store, commands
    finally:
        await store.drop_database()
        await store.close()


def _stages(plan: Any) -> Iterator[dict[str, Any]]:
    """Every plan node in an explain answer (find or aggregate shape, any server)."""
    if isinstance(plan, dict):
        if "stage" in plan:
            yield plan
        for value in plan.values():
            yield from _stages(value)
    elif isinstance(plan, list):
        for value in plan:
            yield from _stages(value)


async def _scans(store: MongoStore, command: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(stage, index name) of the scans in the winning plan of ``command``."""
    answer = await store.db.command("explain", command, verbosity="queryPlanner")
    winning = [
        node
        for node in _stages(answer)
        if node["stage"] in ("IXSCAN", "COLLSCAN", "EXPRESS_IXSCAN", "IDHACK")
    ]
    assert winning, answer
    return [(n["stage"], n.get("indexName")) for n in winning]


def windows(devices: int, n: int) -> list[WindowStats]:
    return [
        WindowStats(
            device_id=f"d{d}",
            metric=m,
            window_seconds=size,
            window_start=T0 + i * size,
            count=3,
            min=1.0,
            max=3.0,
            mean=2.0,
            stddev=0.5,
            p50=2.0,
            p95=3.0,
            last=2.5,
            last_ts=T0 + i * size + 1,
            final=True,
            updated_at=1.0,
        )
        for d in range(devices)
        for m in ("temp", "hum")
        for size in (10, 60)
        for i in range(n)
    ]


async def test_window_writes_and_reads_use_the_window_indexes(
    watched: tuple[MongoStore, Commands],
) -> None:
    store, commands = watched
    stored = windows(devices=4, n=30)
    await store.upsert_windows(stored)
    # A correction of stored windows goes through the conditional update path.
    newer = [msgspec.structs.replace(w, count=4, updated_at=2.0) for w in stored[:50]]
    commands.sent.clear()
    await store.upsert_windows(newer)
    updates = [
        u for c in commands.named("update") if c["update"] == "windows" for u in c["updates"]
    ]
    assert len(updates) == 50
    for u in updates:
        assert await _scans(store, {"find": "windows", "filter": u["q"]}) == [
            ("IXSCAN", "window_key")
        ]
    got = await store.query_windows("d1", metrics=None, window_seconds=60, start=T0, end=T0 + 3600)
    assert [w.count for w in got if w.metric == "temp"][:1] == [3]  # d1 was not corrected

    commands.sent.clear()
    await store.query_windows("d2", metrics=["hum"], window_seconds=10, start=T0, end=T0 + 100)
    await store.aggregate_windows(
        "d2", metrics=None, start=T0, end=T0 + 600, bucket_seconds=60, source_window_seconds=10
    )
    await store.fleet_summary(device_ids=["d1", "d3"], start=T0, end=T0 + 300)
    reads = commands.named("aggregate")
    # query, re-aggregation, fleet metrics, fleet devices (windows), fleet alerts
    assert [c["aggregate"] for c in reads] == ["windows"] * 4 + ["device_alerts"]
    for c in reads:
        scans = await _scans(
            store, {"aggregate": c["aggregate"], "pipeline": c["pipeline"], "cursor": {}}
        )
        assert all(stage != "COLLSCAN" for stage, _ in scans), (c["pipeline"], scans)
    sizes = commands.named("find")
    assert sizes  # the fleet summary's probes for the window sizes with windows in the range
    assert any("sort" not in c for c in sizes)  # ... one of them asking for the range
    for c in sizes:
        explained = {"find": "windows", "filter": c["filter"]}
        if "sort" in c:
            explained["sort"] = c["sort"]
        scans = await _scans(store, explained)
        assert all(stage != "COLLSCAN" for stage, _ in scans), (c, scans)


async def test_sample_range_reads_use_the_device_time_index(
    watched: tuple[MongoStore, Commands],
) -> None:
    store, commands = watched
    n = 200
    batch = SampleBatch(
        device_id=np.array([f"d{i % 4}" for i in range(n)], dtype=object),
        metric=np.array(["temp"] * n, dtype=object),
        ts=T0 + np.arange(n, dtype=np.float64),
        value=np.arange(n, dtype=np.float64),
        seq=np.arange(n, dtype=np.int64),
    )
    await store.insert_samples(batch)
    commands.sent.clear()
    got = await store.query_samples("d1", metrics=["temp"], start=T0, end=T0 + 40)
    assert [s.ts for s in got] == [T0 + i for i in range(1, 40, 4)]
    (c,) = commands.named("aggregate")
    scans = await _scans(
        store, {"aggregate": c["aggregate"], "pipeline": c["pipeline"], "cursor": {}}
    )
    assert all(stage != "COLLSCAN" for stage, _ in scans), (c["pipeline"], scans)


async def test_latest_values_are_kept_and_read_by_index(
    watched: tuple[MongoStore, Commands],
) -> None:
    """The fleet table's reads ask for its devices' keys, whatever the devices ever sent;
    the window writes' latest-value updates are one key probe each."""
    store, commands = watched
    batch = [
        WindowStats(
            device_id=f"d{i % 20}",
            metric="temp" if i % 2 == 0 else "hum",
            window_seconds=10,
            window_start=T0 + 10 * (i // 20),
            count=1,
            min=float(i),
            max=float(i),
            mean=float(i),
            stddev=0.0,
            p50=float(i),
            p95=float(i),
            last=float(i),
            last_ts=T0 + i,
            updated_at=1.0,
        )
        for i in range(200)
    ]
    commands.sent.clear()
    await store.upsert_windows(batch)
    (writes,) = [c for c in commands.named("update") if c["update"] == "latest_values"]
    assert len(writes["updates"]) == 20  # one per device × metric (each device sends one)
    for u in writes["updates"]:
        scans = await _scans(store, {"find": "latest_values", "filter": u["q"]})
        assert all(stage != "COLLSCAN" for stage, _ in scans), (u["q"], scans)

    commands.sent.clear()
    ids = [f"d{i}" for i in range(20)]
    top = await store.rank_by_latest(metric="temp", device_ids=ids, descending=True, limit=3)
    assert top == ["d18", "d16", "d14"]
    assert len(await store.latest_values(device_ids=top)) == 3
    finds = [c for c in commands.named("find") if c["find"] == "latest_values"]
    assert len(finds) == 2
    for c in finds:
        scans = await _scans(store, {"find": "latest_values", "filter": c["filter"]})
        assert all(stage != "COLLSCAN" for stage, _ in scans), (c["filter"], scans)


async def test_samples_collection_is_time_series(mongodb_url: str) -> None:
    """MongoDB lists it as ``type: timeseries``; the emulator as a plain collection that keeps
    the time-series options (it stores one document per sample, unbucketed)."""
    store = MongoStore(mongodb_url, database=f"iot_ts_{secrets.token_hex(4)}")
    await store.start()
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
        listed = await (await client[store.db.name].list_collections()).to_list()
        await client.close()
        (samples,) = [c for c in listed if c["name"] == "monitoring_data"]
        assert samples["options"]["timeseries"]["timeField"] == "t"
        assert samples["options"]["timeseries"]["metaField"] == "m"
        assert samples["type"] in ("timeseries", "collection")
    finally:
        await store.drop_database()
        await store.close()


def _kill(server: PrivateMongoDB) -> None:
    if server.proc is not None and server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
    server.proc = None


async def test_what_the_store_acknowledged_survives_a_killed_server() -> None:
    """The agents commit offsets once a write is acknowledged: a SIGKILL of the server right
    after must not lose it (without journaled writes the emulator lost the last few hundred
    milliseconds of acknowledged samples)."""
    server = PrivateMongoDB(cache_size="64M")
    server.start()
    try:
        url = f"{server.url}/iot_durable"
        store = MongoStore(url)
        await store.start()
        per, batches = 50, 20
        stored = windows(devices=2, n=batches)
        for b in range(batches):
            i = np.arange(b * per, (b + 1) * per)
            await store.insert_samples(
                SampleBatch(
                    device_id=np.array(["d1"] * per, dtype=object),
                    metric=np.array(["temp"] * per, dtype=object),
                    ts=T0 + i.astype(np.float64),
                    value=i.astype(np.float64),
                    seq=i.astype(np.int64),
                )
            )
            await store.upsert_windows([w for w in stored if w.window_start == T0 + b * 10])
        _kill(server)
        await store.close()

        server.start()
        store = MongoStore(url)
        await store.start()
        try:
            got = await store.query_samples(
                "d1", metrics=None, start=T0, end=T0 + per * batches, limit=100_000
            )
            assert [s.seq for s in got] == list(range(per * batches))
            kept = await store.query_windows(
                "d1", metrics=None, window_seconds=10, start=T0, end=T0 + 3600
            )
            assert len(kept) == 2 * batches  # two metrics
        finally:
            await store.close()
    finally:
        _kill(server)  # nothing here needs a clean stop (which can take the emulator 20 s)
        server.cleanup()


async def test_a_store_whose_server_stopped_answering_still_closes_promptly() -> None:
    """A service stopped while its store is unreachable must still exit: PyMongo's close
    waited the whole server selection timeout (30 s) to send ``endSessions`` to a server that
    did not answer, longer than monitoring-api's shutdown allowance and a pod's grace period."""
    server = PrivateMongoDB(cache_size="64M")
    server.start()
    assert server.proc is not None
    try:
        store = MongoStore(f"{server.url}/iot_close", close_timeout=1.0)
        await store.start()
        await store.upsert_windows(windows(devices=1, n=1))  # a pooled session to end
        os.killpg(server.proc.pid, signal.SIGSTOP)
        try:
            t = time.monotonic()
            await asyncio.wait_for(store.close(), 60)
            took = time.monotonic() - t
        finally:
            os.killpg(server.proc.pid, signal.SIGCONT)
        assert took < 10, f"close took {took:.1f} s with the server not answering"
    finally:
        _kill(server)
        server.cleanup()


def test_writes_are_journaled_unless_the_url_chooses_a_write_concern() -> None:
    assert MongoStore("mongodb://h/db")._client_options == {"journal": True}
    assert MongoStore("mongodb://h/db?w=majority")._client_options == {}
    assert MongoStore("mongodb://h/db?journal=false")._client_options == {}
    assert MongoStore("mongodb://h/db", w=0)._client_options == {"w": 0}
