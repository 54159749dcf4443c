"""PostgreSQL-specific behaviour: schema creation races, chunked writes, URL forms."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from monitoring_store import SampleBatch, open_store
from monitoring_store import postgres as pg

T0 = 1_789_948_800.0


async def test_concurrent_start_and_sqlalchemy_style_url(
    pg_database_factory: Callable[[str], str],
) -> None:
    url = pg_database_factory("pgstart")
    stores = [
        open_store(url.replace("postgresql://", "postgresql+asyncpg://"), max_pool=2)
        for _ in range(3)
    ]
    await asyncio.gather(*(s.start() for s in stores))  # several services starting at once
    try:
        assert await stores[0].query_alerts() == []
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_big_batches_are_split_between_readings(
    pg_database_factory: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg, "WRITE_CHUNK", 7)  # so a reading's 3 rows straddle chunk edges
    store = open_store(pg_database_factory("pgchunk"))
    await store.start()
    try:
        n = 10
        metrics = ["a", "b", "c"]
        batch = SampleBatch(
            device_id=np.array(["d1"] * (3 * n), dtype=object),
            metric=np.array(metrics * n, dtype=object),
            ts=np.repeat(T0 + np.arange(n, dtype=np.float64), 3),
            value=np.arange(3 * n, dtype=np.float64),
            seq=np.repeat(np.arange(n, dtype=np.int64), 3),
        )
        await store.insert_samples(batch)
        got = await store.query_samples("d1", metrics=None, start=T0, end=T0 + n)
        assert [(s.metric, s.value) for s in got] == [
            (m, float(3 * i + j)) for i in range(n) for j, m in enumerate(metrics)
        ]
    finally:
        await store.close()


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        open_store("redis://localhost:6379/0")
